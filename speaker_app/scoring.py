"""Scores and error rates: cosine scoring, adaptive s-norm, enrollment centroids, EER and minDCF.

Error rates are measured only at thresholds that separate distinct scores: a
threshold can accept every trial scoring at least some value, never half of a
tie, so tied scores cannot fake a perfect operating point.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

DEFAULT_TOP_K = 300  # cohort scores per side in AS-norm (WeSpeaker's default)


def centroid(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, E) unit embeddings of one speaker -> (E,) unit mean direction."""
    return F.normalize(embeddings.mean(0), dim=-1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, E), (M, E) -> (N, M) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


# -- score normalisation ------------------------------------------------------------------------
class CohortStats(NamedTuple):
    mean: torch.Tensor  # (N,)
    std: torch.Tensor  # (N,)


class Scorer:
    """Cosine scores, adaptively s-normalised against a cohort when there is one.

    AS-norm (Matejka et al. 2017; WeSpeaker's `score_norm`): each side of a trial
    is compared with the cohort, and the mean and standard deviation of its
    `top_k` highest cohort scores turn the trial's cosine into two z-scores,
    which are averaged. Both sides' cohort comparisons depend only on that side,
    so stored speakers' statistics are computed once (`stats`).

    Clips scored against enrolled speakers (`score_speakers`) also take the
    enrolled speakers' own clips into the cohort, each trial leaving out the
    clips of the speaker it is against: speakers enrolled from one recording
    condition then normalise one another, which no training speaker can do for a
    condition the model never trained on.

    cohort: (K, E) embeddings of speakers that are neither tested nor enrolled
    (training speakers' class weights); None scores by raw cosine.
    """

    def __init__(self, cohort: torch.Tensor | None = None, top_k: int = DEFAULT_TOP_K):
        if cohort is not None:
            if cohort.dim() != 2 or len(cohort) < 2:
                raise ValueError(f"a cohort is a (K, E) tensor with K >= 2, got shape {tuple(cohort.shape)}")
            if top_k < 2:
                raise ValueError(f"AS-norm needs top_k >= 2 cohort scores, got {top_k}")
            cohort = F.normalize(cohort.float(), dim=-1)
        self.cohort = cohort
        self.top_k = min(top_k, len(cohort)) if cohort is not None else 0

    @property
    def kind(self) -> str:
        return "as-norm" if self.cohort is not None else "cosine"

    def describe(self) -> str:
        if self.cohort is None:
            return "cosine similarity"
        return (f"cosine adaptively s-normalised (AS-norm, top {self.top_k} of a {len(self.cohort)}-speaker cohort "
                "and the other enrolled speakers' clips)")

    def _top(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, E) -> (N, top_k) each row's highest cosines with the cohort."""
        return cosine(embeddings, self.cohort).topk(self.top_k, dim=-1).values

    def stats(self, embeddings: torch.Tensor) -> CohortStats | None:
        """(N, E) -> mean and std of each row's top_k cohort cosines; None without a cohort."""
        return _top_stats(self._top(embeddings), self.top_k) if self.cohort is not None else None

    def score(self, left: torch.Tensor, right: torch.Tensor, left_stats: CohortStats | None = None,
              right_stats: CohortStats | None = None) -> torch.Tensor:
        """(N, E), (M, E) -> (N, M) scores, higher is more alike. Pass precomputed stats to save work."""
        raw = cosine(left, right)
        if self.cohort is None:
            return raw
        left_stats = left_stats if left_stats is not None else self.stats(left)
        right_stats = right_stats if right_stats is not None else self.stats(right)
        return _as_norm(raw, left_stats.mean[:, None], left_stats.std[:, None],
                        right_stats.mean[None, :], right_stats.std[None, :])

    def score_speakers(self, clips: torch.Tensor, speakers: torch.Tensor, enrolled: torch.Tensor | None = None,
                       owners: torch.Tensor | None = None) -> torch.Tensor:
        """(N, E) clips vs (M, E) speakers -> (N, M) scores, the speakers' enrollment clips in the cohort.

        enrolled: (G, E) enrollment clips, owners: (G,) the column of the speaker each belongs to
        (-1: none of them). Column j's cohort is the stored one plus every enrollment clip not of
        speaker j, on both sides of the trial. Without enrollment clips, or without a cohort, it is `score`.
        """
        if self.cohort is None or enrolled is None or len(enrolled) == 0:
            return self.score(clips, speakers)
        if owners is None or owners.shape != (len(enrolled),):
            raise ValueError(f"owners must give one column per enrollment clip: {len(enrolled)}")
        raw = cosine(clips, speakers)
        clip_top, speaker_top = self._top(clips), self._top(speakers)  # (N, k), (M, k)
        clip_enrolled, speaker_enrolled = cosine(clips, enrolled), cosine(speakers, enrolled)  # (N, G), (M, G)
        everyone = _top_stats(torch.cat([clip_top, clip_enrolled], 1), self.top_k)  # for columns owning no clip
        scores = torch.empty_like(raw)
        for j in range(len(speakers)):
            others = owners != j
            left = everyone if others.all() else _top_stats(torch.cat([clip_top, clip_enrolled[:, others]], 1),
                                                            self.top_k)
            right = _top_stats(torch.cat([speaker_top[j], speaker_enrolled[j, others]])[None], self.top_k)
            scores[:, j] = _as_norm(raw[:, j], left.mean, left.std, right.mean, right.std)
        return scores


def _top_stats(values: torch.Tensor, top_k: int) -> CohortStats:
    """(N, X) cohort cosines -> mean and std of each row's top_k."""
    top = values.topk(top_k, dim=-1).values
    return CohortStats(top.mean(-1), top.std(-1).clamp(min=1e-4))


def _as_norm(raw, left_mean, left_std, right_mean, right_std):
    return ((raw - left_mean) / left_std + (raw - right_mean) / right_std) / 2


# -- error rates --------------------------------------------------------------------------------
class OperatingPoints(NamedTuple):
    """Every distinct decision `accept when score >= threshold`, from accepting none to accepting all."""
    thresholds: torch.Tensor  # (P,) float64, decreasing
    false_accept: torch.Tensor  # (P,) share of non-target trials accepted
    false_reject: torch.Tensor  # (P,) share of target trials rejected


def _check_trials(scores: torch.Tensor, same: torch.Tensor, what: str):
    if scores.shape != same.shape or scores.dim() != 1:
        raise ValueError(f"scores and same must be (N,) of one length, got {tuple(scores.shape)}, {tuple(same.shape)}")
    same = same.bool()
    if same.all() or not same.any():
        raise ValueError(f"{what} needs both same- and different-speaker trials")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{what} needs finite scores")
    return scores.double(), same


def operating_points(scores: torch.Tensor, same: torch.Tensor) -> OperatingPoints:
    """Error rates at each threshold between distinct scores (N,) of trials with labels same (N,).

    Point i accepts the trials scoring at least the i-th highest distinct score
    (point 0 accepts none). Its threshold lies halfway to the next distinct score
    below, so it holds a little way off the measured scores.
    """
    scores, same = _check_trials(scores, same, "error rates")
    values, inverse = torch.unique(scores, sorted=True, return_inverse=True)  # ascending
    values, inverse = values.flip(0), len(values) - 1 - inverse  # descending
    targets = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, same.double())
    others = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, (~same).double())
    zero = torch.zeros(1, dtype=torch.float64)
    false_accept = torch.cat([zero, others.cumsum(0)]) / others.sum()
    false_reject = 1 - torch.cat([zero, targets.cumsum(0)]) / targets.sum()
    above = torch.tensor([math.nextafter(float(values[0]), math.inf)], dtype=torch.float64)
    halfway = (values[:-1] + values[1:]) / 2
    thresholds = torch.cat([above, halfway, values[-1:]])
    return OperatingPoints(thresholds, false_accept, false_reject)


def equal_error_rate(scores: torch.Tensor, same: torch.Tensor) -> tuple[float, float]:
    """The rate where false accepts equal false rejects, and the score threshold there.

    scores (N,) higher means more alike; same (N,) bool, True for target trials.
    Only thresholds between distinct scores count: N tied scores give 0.5.
    """
    points = operating_points(scores, same)
    i = int((points.false_accept - points.false_reject).abs().argmin())
    eer = float((points.false_accept[i] + points.false_reject[i]) / 2)
    return eer, float(points.thresholds[i])


def min_dcf(scores: torch.Tensor, same: torch.Tensor, p_target: float = 0.01, c_miss: float = 1.0,
            c_fa: float = 1.0) -> tuple[float, float]:
    """Normalised minimum detection cost (NIST SRE), and the threshold where it is reached.

    DCF = c_miss * P_miss * p_target + c_fa * P_fa * (1 - p_target), divided by
    the cost of the better trivial system, min(c_miss * p_target, c_fa * (1 - p_target)):
    1.0 means no better than always rejecting (or accepting).
    """
    if not 0 < p_target < 1 or c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"need 0 < p_target < 1 and positive costs, got {p_target}, {c_miss}, {c_fa}")
    points = operating_points(scores, same)
    cost = c_miss * p_target * points.false_reject + c_fa * (1 - p_target) * points.false_accept
    i = int(cost.argmin())
    return float(cost[i] / min(c_miss * p_target, c_fa * (1 - p_target))), float(points.thresholds[i])
