"""Batched inference on whole utterances: logits and unit embeddings, and what the model looked at.

Long utterances are cut into chunks of at most `chunk_frames` (attention cost
grows with the square of the length); a chunked utterance's embedding is the
length-weighted mean of its chunks' embeddings. `infer_explained` gives the same
answer plus each utterance's attention maps and pooling weights, from the same
forward pass when the utterance fits one chunk.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .model import SpeakerModel

CHUNK_FRAMES = 3000  # 30 s at a 10 ms hop
EXPLAIN_FRAMES = 1500  # the explanation covers the first 15 s (at 2x subsampling, maps of 750 x 750 frames)
EXPLAIN_BATCH_FRAMES = 12000  # attention maps are (B, H, T', T'): smaller batches than infer's


class Outputs(NamedTuple):
    logits: torch.Tensor  # (N, C)
    embeddings: torch.Tensor  # (N, E), unit norm


class Inside(NamedTuple):
    """What the model did with the first `frames` input frames of one utterance."""

    attention: list[torch.Tensor]  # per layer (H, T', T'), T' encoder frames
    pooling: torch.Tensor  # (T',) attentive-pooling weights
    frames: int  # input frames covered
    frame_step: int  # input frames per encoder frame


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


@torch.no_grad()
def infer_explained(model: SpeakerModel, utterances: list[torch.Tensor], explain_frames: int = EXPLAIN_FRAMES,
                    max_frames: int = EXPLAIN_BATCH_FRAMES,
                    chunk_frames: int = CHUNK_FRAMES) -> tuple[Outputs, list[Inside]]:
    """infer()'s logits and embeddings, and each utterance's attention maps and pooling weights over
    its first `explain_frames` frames.

    An utterance that fits one chunk runs once, through `forward_intermediates`: its answer is
    infer()'s (one chunk: the chunk's own logits and embedding) and its explanation comes from the
    same pass, cropped to the first frames. A longer one gets infer()'s chunked answer, and a
    second, short pass over its first frames for the explanation.
    """
    if not utterances:
        raise ValueError("no utterances to score")
    model.eval()
    count = len(utterances)
    logits, embeddings, insides = [None] * count, [None] * count, [None] * count
    short = [i for i, u in enumerate(utterances) if len(u) <= chunk_frames]
    long = [i for i, u in enumerate(utterances) if len(u) > chunk_frames]
    for batch in length_batches([len(utterances[i]) for i in short], max_frames):
        items = [short[j] for j in batch]
        padded = torch.nn.utils.rnn.pad_sequence([utterances[i].float() for i in items], batch_first=True)
        out = model.forward_intermediates(padded, torch.tensor([len(utterances[i]) for i in items]))
        for row, i in enumerate(items):
            logits[i], embeddings[i] = out.logits[row].float(), out.embedding[row].float()
            insides[i] = _crop(out, row, min(len(utterances[i]), explain_frames))
    if long:
        outputs = infer(model, [utterances[i] for i in long], chunk_frames=chunk_frames)
        for row, i in enumerate(long):
            logits[i], embeddings[i] = outputs.logits[row], outputs.embeddings[row]
            first = utterances[i][:explain_frames].float()
            insides[i] = _crop(model.forward_intermediates(first[None], torch.tensor([len(first)])), 0, len(first))
    return Outputs(torch.stack(logits), torch.stack(embeddings)), insides


def _crop(out, row: int, frames: int) -> Inside:
    """Row `row` of forward_intermediates' output, cut to the encoder frames of its first `frames` input frames."""
    keep = min(int(out.lengths[row]), -(-frames // out.frame_step))
    attention = [maps[row, :, :keep, :keep].float().clone() for maps in out.attention]  # clone: free the batch's maps
    return Inside(attention, out.pooling[row, :keep].float().clone(), frames, out.frame_step)
