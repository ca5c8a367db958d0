"""Cosine scoring, enrollment centroids and the equal error rate."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def centroid(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, E) unit embeddings of one speaker -> (E,) unit mean direction."""
    return F.normalize(embeddings.mean(0), dim=-1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, E), (M, E) -> (N, M) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def equal_error_rate(scores: torch.Tensor, same: torch.Tensor) -> tuple[float, float]:
    """The rate where false accepts equal false rejects, and the score threshold there.

    scores (N,) higher means more alike; same (N,) bool, True for target trials.
    """
    same = same.bool()
    if same.all() or not same.any():
        raise ValueError("the equal error rate needs both same- and different-speaker trials")
    order = scores.argsort(descending=True)
    scores, same = scores[order], same[order].float()
    # Accept the first k trials (k = 1..N): false accepts among them, false rejects after them.
    false_accept = (1 - same).cumsum(0) / (1 - same).sum()
    false_reject = 1 - same.cumsum(0) / same.sum()
    k = int((false_accept - false_reject).abs().argmin())
    eer = float((false_accept[k] + false_reject[k]) / 2)
    threshold = float((scores[k] + scores[k + 1]) / 2) if k + 1 < len(scores) else float(scores[k])
    return eer, threshold
