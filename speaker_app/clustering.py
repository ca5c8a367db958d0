"""Windows into speakers: clustering unit embeddings, estimating how many speakers there are.

Each method takes (N, E) unit embeddings in time order and a `Count` (the number of speakers if known, else
bounds on it) and returns N labels 0..K-1, numbered by first appearance. They are measured against each
other in bench/RESULTS.md ("Who speaks when"):

- `agglomerative`: average-linkage clustering on cosine distance (scipy), cut at a calibrated distance.
- `spectral`: spectral clustering with the number of speakers from the largest eigengap of the refined
  affinity matrix (Google's `spectralcluster`: its ICASSP 2018 refinement with the row-wise threshold
  auto-tuned; fixed, it gave one speaker for most conversations, and the Turn-to-Diarize configuration
  merged voices; over SPECTRAL_SIZE windows, its multi-stage mode first reduces them by agglomerative
  clustering). An eigengap needs two clusters to compare, so it finds at least 2 speakers.
- `resegment`: after either, a Viterbi pass in the manner of VBx: the speakers are the states of a hidden
  Markov model over the window sequence, each window scored by its cosine to each speaker's centroid, a
  change of speaker costing `switch_penalty`; centroids are re-estimated and the pass repeated.

`centred` may come first: each window less a share of the recording's mean window, made unit again. What every
window of a recording shares (its channel, its noise) then weighs less against what tells its voices apart; in
noise, windows of different people otherwise look alike and are merged.

`absorb_small` then folds clusters holding less than a few seconds of speech into the nearest other one:
a stray window (a laugh, a cough, noise) must not count as a speaker.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

METHODS = ("agglomerative", "spectral")
SPECTRAL_SIZE = 600  # the eigen-decomposition grows with the cube of the windows: an hour has ~5,000


class Count(NamedTuple):
    """How many speakers: `exact` when known, else between `low` and `high`."""

    exact: int | None = None
    low: int = 1
    high: int = 20

    def check(self) -> Count:
        if self.exact is not None and self.exact < 1:
            raise ValueError(f"the number of speakers must be at least 1, got {self.exact}")
        if not 1 <= self.low <= self.high:
            raise ValueError(f"speaker bounds must satisfy 1 <= min <= max, got {self.low} and {self.high}")
        return self


def first_appearance(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0, 1, ... in the order they first appear."""
    order = {}
    for label in labels.tolist():
        order.setdefault(label, len(order))
    return np.array([order[label] for label in labels.tolist()], dtype=np.int64)


def centred(embeddings: np.ndarray, share: float) -> np.ndarray:
    """(N, E) unit embeddings of one recording less `share` of their mean, unit again (see above)."""
    if not 0 <= share <= 1:
        raise ValueError(f"the share of the mean taken away is between 0 and 1, got {share}")
    shifted = embeddings - share * embeddings.mean(0, keepdims=True)
    return shifted / np.linalg.norm(shifted, axis=1, keepdims=True).clip(min=1e-12)


def agglomerative(embeddings: np.ndarray, threshold: float, count: Count = Count()) -> np.ndarray:
    """(N, E) unit embeddings -> (N,) labels: average linkage on cosine distance, cut at `threshold` (or at
    the known number of speakers), the number of clusters kept within the count's bounds."""
    count.check()
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), dtype=np.int64)
    tree = linkage(pdist(embeddings, "cosine").clip(min=0), method="average")
    if count.exact is not None:
        return first_appearance(fcluster(tree, min(count.exact, len(embeddings)), "maxclust"))
    labels = fcluster(tree, threshold, "distance")
    found = labels.max()
    if not count.low <= found <= count.high:
        labels = fcluster(tree, min(max(found, count.low), count.high, len(embeddings)), "maxclust")
    return first_appearance(labels)


def spectral(embeddings: np.ndarray, count: Count = Count()) -> np.ndarray:
    """(N, E) unit embeddings -> (N,) labels by spectralcluster's eigengap rule (or the known count)."""
    from spectralcluster import SpectralClusterer, configs

    count.check()
    if len(embeddings) < 3:  # the eigengap needs a few points; so few windows are one speaker
        return np.zeros(len(embeddings), dtype=np.int64)
    low, high = (count.exact, count.exact) if count.exact is not None else (max(2, count.low), count.high)
    high = min(high, len(embeddings) - 1)
    clusterer = SpectralClusterer(min_clusters=min(low, high), max_clusters=high, custom_dist="cosine",
                                  refinement_options=configs.icassp2018_refinement_options,
                                  autotune=configs.turntodiarize_auto_tune,
                                  max_spectral_size=SPECTRAL_SIZE if len(embeddings) > SPECTRAL_SIZE else None)
    return first_appearance(clusterer.predict(embeddings.astype(np.float64)))


def centroids(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, E), (N,) labels 0..K-1 -> (K, E) unit mean embedding of each label."""
    sums = np.zeros((labels.max() + 1, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    return sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(min=1e-12)


def viterbi(scores: np.ndarray, switch_penalty: float) -> np.ndarray:
    """(N, K) per-window scores of each state -> (N,) the best state path, a change of state costing
    `switch_penalty` (in the scores' units)."""
    count, states = scores.shape
    total = scores[0].copy()
    back = np.zeros((count, states), dtype=np.int64)
    for t in range(1, count):
        stay_or_switch = total[None, :] - switch_penalty * (1 - np.eye(states))  # (to, from)
        back[t] = stay_or_switch.argmax(1)
        total = stay_or_switch.max(1) + scores[t]
    path = np.zeros(count, dtype=np.int64)
    path[-1] = total.argmax()
    for t in range(count - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def resegment(embeddings: np.ndarray, labels: np.ndarray, switch_penalty: float, iterations: int = 2) -> np.ndarray:
    """Labels re-estimated by a Viterbi pass over the windows against the clusters' centroids (see above)."""
    for _ in range(iterations):
        if labels.max() < 1:
            break
        labels = first_appearance(viterbi(embeddings @ centroids(embeddings, labels).T, switch_penalty))
    return labels


def absorb_small(embeddings: np.ndarray, labels: np.ndarray, seconds: np.ndarray, min_seconds: float,
                 keep: int = 1) -> np.ndarray:
    """Clusters with under `min_seconds` of speech (`seconds`: (N,) each window's share) merged, smallest first,
    into the cluster whose centroid is nearest, while more than `keep` clusters remain."""
    labels = labels.copy()
    while labels.max() + 1 > keep:
        totals = np.bincount(labels, weights=seconds)
        smallest = int(totals.argmin())
        if totals[smallest] >= min_seconds:
            break
        similarity = centroids(embeddings, labels) @ centroids(embeddings, labels)[smallest]
        similarity[smallest] = -np.inf
        labels[labels == smallest] = int(similarity.argmax())
        labels = first_appearance(labels)
    return labels
