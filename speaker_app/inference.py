"""Batched inference on utterances: logits and unit embeddings, and what the model looked at.

A model whose config sets `window_frames` embeds an utterance longer than that
in half-overlapping windows of that length (the last one flush with the end):
the crop length it was trained on, where its embeddings are most alike from
clip to clip. Other models take the utterance whole, cut only into chunks of at
most `chunk_frames` (attention cost grows with the square of the length). Either
way the embedding is the length-weighted mean of its pieces' embeddings.
`infer_explained` gives the same answer plus each utterance's attention maps and
pooling weights, from the same forward pass when the utterance is one piece.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .model import Ensemble, SpeakerModel

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


def windows(features: torch.Tensor, window_frames: int) -> list[torch.Tensor]:
    """(T, F) -> windows of window_frames, each starting half a window after the last, the last one
    ending with the utterance; a (T, F) no longer than a window is its only piece."""
    if len(features) <= window_frames:
        return [features]
    hop = max(1, window_frames // 2)
    starts = [*range(0, len(features) - window_frames, hop), len(features) - window_frames]
    return [features[start: start + window_frames] for start in starts]


def pieces_of(model, features: torch.Tensor, chunk_frames: int = CHUNK_FRAMES) -> list[torch.Tensor]:
    """What the model embeds of one utterance: its windows when its config sets window_frames, else chunks."""
    window_frames = model.config.window_frames
    return windows(features, window_frames) if window_frames else chunk(features, chunk_frames)


def explainer(model):
    """The network whose attention maps and pooling weights explain the model's answers: an ensemble's
    first member (`Ensemble`), else the model itself."""
    return model.members[0] if isinstance(model, Ensemble) else model


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
        for piece in pieces_of(model, features, chunk_frames):
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

    An utterance that is one piece (see `pieces_of`) runs once, through `forward_intermediates`: its
    answer is infer()'s (its own logits and embedding) and its explanation comes from the same pass,
    cropped to the first frames. A longer one gets infer()'s answer from its pieces, and a second,
    short pass over its first frames for the explanation, through the `explainer` alone (an
    ensemble's other members would only make an embedding nobody uses).
    """
    if not utterances:
        raise ValueError("no utterances to score")
    model.eval()
    count = len(utterances)
    logits, embeddings, insides = [None] * count, [None] * count, [None] * count
    piece_frames = model.config.window_frames or chunk_frames  # longer utterances are cut (pieces_of)
    short = [i for i, u in enumerate(utterances) if len(u) <= piece_frames]
    long = [i for i, u in enumerate(utterances) if len(u) > piece_frames]
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
            inside = explainer(model).forward_intermediates(first[None], torch.tensor([len(first)]))
            insides[i] = _crop(inside, 0, len(first))
    return Outputs(torch.stack(logits), torch.stack(embeddings)), insides


def _crop(out, row: int, frames: int) -> Inside:
    """Row `row` of forward_intermediates' output, cut to the encoder frames of its first `frames` input frames."""
    keep = min(int(out.lengths[row]), -(-frames // out.frame_step))
    attention = [maps[row, :, :keep, :keep].float().clone() for maps in out.attention]  # clone: free the batch's maps
    return Inside(attention, out.pooling[row, :keep].float().clone(), frames, out.frame_step)
