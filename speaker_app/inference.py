"""Batched inference on whole utterances: logits and unit embeddings.

Long utterances are cut into chunks of at most `chunk_frames` (attention cost
grows with the square of the length); a chunked utterance's embedding is the
length-weighted mean of its chunks' embeddings.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .model import SpeakerModel

CHUNK_FRAMES = 3000  # 30 s at a 10 ms hop


class Outputs(NamedTuple):
    logits: torch.Tensor  # (N, C)
    embeddings: torch.Tensor  # (N, E), unit norm


def chunk(features: torch.Tensor, chunk_frames: int = CHUNK_FRAMES) -> list[torch.Tensor]:
    """(T, F) -> pieces of nearly equal length, none longer than chunk_frames."""
    pieces = -(-len(features) // chunk_frames)
    return list(torch.tensor_split(features, pieces)) if pieces > 1 else [features]


def length_batches(lengths: list[int], max_frames: int) -> list[list[int]]:
    """Indices grouped by similar length so that padded batches hold at most ~max_frames frames."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches, batch = [], []
    for i in order:
        if batch and lengths[i] * (len(batch) + 1) > max_frames:
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + ([batch] if batch else [])


@torch.no_grad()
def infer(model: SpeakerModel, utterances: list[torch.Tensor], max_frames: int = 40000,
          chunk_frames: int = CHUNK_FRAMES, device: str | torch.device = "cpu") -> Outputs:
    """Logits and unit embeddings for (T_i, n_mels) utterances, in their order."""
    if not utterances:
        raise ValueError("no utterances to score")
    model.eval()
    pieces, owner = [], []
    for i, features in enumerate(utterances):
        for piece in chunk(features, chunk_frames):
            pieces.append(piece)
            owner.append(i)
    lengths = [len(p) for p in pieces]
    raw = [None] * len(pieces)
    for batch in length_batches(lengths, max_frames):
        padded = torch.nn.utils.rnn.pad_sequence([pieces[i].float() for i in batch], batch_first=True)
        embedded = model.embed(padded.to(device), torch.tensor([lengths[i] for i in batch], device=device))
        for i, row in zip(batch, embedded.float().cpu()):
            raw[i] = row
    weights = torch.zeros(len(utterances), len(pieces))
    weights[owner, range(len(pieces))] = torch.tensor(lengths, dtype=torch.float)
    pooled = (weights / weights.sum(1, keepdim=True)) @ torch.stack(raw)  # (N, E)
    logits = model.head(pooled.to(device)).float().cpu()
    return Outputs(logits, F.normalize(pooled, dim=-1))
