"""The decision rules a checkpoint's calibration sets: score, thresholds and probabilities.

`checkpoint.info["calibration"]`, as `training.calibrate` writes it:

    {"score": {"kind": "as-norm" | "cosine", "top_k": 300, "cohort_size": K},
     "identification": {"threshold": t, "method": "...", "rule": "...", "trials": {...}, ...},
     "verification": {"threshold": t, "method": "...", "eer": e, ...},
     "probability": {"slope": a, "temperature": T, "method": "...", ...}}

Identification names the best-scoring speaker when its score (clip vs speaker)
reaches the identification threshold; verification says "same" when a clip-vs-clip
score reaches the verification threshold. A gallery-calibrated identification record
(`training.calibrate` since 2026-12-07) holds two thresholds, one for the model's own
speakers (scored by prototype) and one for enrolled speakers (scored by voiceprint),
and may let the enrolled speakers' threshold move with what is known at decision
time: the seconds of speech in the clip and in the speaker's enrollment
(`per_log_test_seconds`, `per_log_enroll_seconds`: the change per unit of their
natural logarithms, from the threshold at `reference_seconds`), and with how many speakers
are enrolled (`gallery_thresholds`: [[size, threshold], ...], the threshold at the reference
durations per calibrated gallery size; `threshold` is the largest one's). Probabilities shown to people are
P(known) = sigmoid(slope * (best score - identification threshold)), so a speaker
is named exactly when P(known) >= 50%, times a softmax over the speakers' scores
at the fitted temperature; the rest, 1 - P(known), is "unknown speaker".

Older checkpoints carry `{"threshold", "eer", "method"}`: a clip-vs-clip cosine
threshold, used for both decisions; their probabilities are defaults, not fitted,
and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .scoring import DEFAULT_TOP_K, Scorer

SCORES = ("cosine", "as-norm")
DEFAULT_THRESHOLD = {"cosine": 0.5, "as-norm": 3.0}  # rough guesses for uncalibrated checkpoints
DEFAULT_SLOPE = {"cosine": 10.0, "as-norm": 1.0}  # P(known) per unit of score above the threshold, unfitted
DEFAULT_MIN_ENROLL_SECONDS = 10.0  # unless the calibration measured it
MAX_PROBABILITY = 0.99  # a few hundred calibration trials cannot support more certainty than this


REFERENCE_SECONDS = {"test": 3.0, "enroll": 15.0}
# The seconds terms hold durations to the range their calibration saw (a record's `seconds_range`): a term
# fitted on clips of 1 to 9 s says nothing about a 40-s clip. Records made before 2026-12-07 (evening) lack the
# range and keep this wide one.
SECONDS_RANGE = (0.5, 60.0)


@dataclass(frozen=True)
class Rule:
    threshold: float  # for enrolled speakers at the reference durations (and for everything, without the rest)
    method: str  # how the threshold was set, for people, with its trials and measured rates
    calibrated: bool  # fitted for this decision, on this model's scores
    rule: str = ""  # the method in brief
    known_threshold: float | None = None  # for the model's own speakers (prototypes); None: `threshold`
    per_log_test_seconds: float = 0.0
    per_log_enroll_seconds: float = 0.0
    seconds_range: dict[str, tuple[float, float]] | None = None  # per "test" / "enroll"; None: SECONDS_RANGE
    # (enrolled speakers, threshold) pairs, sizes rising: the enrolled speakers' threshold at the reference durations
    # for a gallery of that size; None: `threshold` whatever the size
    gallery_thresholds: tuple[tuple[int, float], ...] | None = None

    @property
    def summary(self) -> str:
        return self.rule or self.method

    def threshold_for(self, enrolled: bool, test_seconds: float = REFERENCE_SECONDS["test"],
                      enroll_seconds: float = REFERENCE_SECONDS["enroll"], gallery_size: int | None = None) -> float:
        """The threshold a candidate's score must reach: a known speaker's, or an enrolled one's given the
        clip's and the enrollment's seconds of speech (NaN or unknown: the reference) and how many speakers are
        enrolled (None: the largest gallery calibrated, the most cautious)."""
        if not enrolled:
            return self.threshold if self.known_threshold is None else self.known_threshold
        return (self.for_gallery(gallery_size) + self.per_log_test_seconds * self._log_ratio(test_seconds, "test")
                + self.per_log_enroll_seconds * self._log_ratio(enroll_seconds, "enroll"))

    def for_gallery(self, size: int | None) -> float:
        """The enrolled speakers' threshold at the reference durations for a gallery of `size`: between two
        calibrated sizes linear in log(size), held at the smallest and the largest (a stranger meets more voices in
        a larger gallery, so its threshold is higher; past the largest the rise has flattened)."""
        points = self.gallery_thresholds
        if not points or size is None:
            return self.threshold
        sizes, thresholds = [math.log(n) for n, _ in points], [t for _, t in points]
        x = math.log(min(max(size, points[0][0]), points[-1][0]))
        upper = next(i for i, value in enumerate(sizes) if value >= x)
        if upper == 0 or sizes[upper] == x:
            return thresholds[upper]
        share = (x - sizes[upper - 1]) / (sizes[upper] - sizes[upper - 1])
        return thresholds[upper - 1] + share * (thresholds[upper] - thresholds[upper - 1])

    def _log_ratio(self, seconds: float, kind: str) -> float:
        if not math.isfinite(seconds) or seconds <= 0:
            return 0.0
        low, high = (self.seconds_range or {}).get(kind, SECONDS_RANGE)
        return math.log(min(max(seconds, low), high) / REFERENCE_SECONDS[kind])


@dataclass(frozen=True)
class EnrollmentRule:
    """When the Enroll tab advises: too little speech, or a piece unlike the others."""
    min_seconds: float  # less enrollment speech than this is recognised markedly less often
    why_seconds: str  # the measurement behind it, for people
    disagree_below: float  # a piece scoring below this against the mean of the others does not sound like them
    why_disagree: str

    @classmethod
    def from_record(cls, record: dict | None, verification: Rule) -> EnrollmentRule:
        record = record or {}
        return cls(float(record.get("min_seconds", DEFAULT_MIN_ENROLL_SECONDS)),
                   record.get("why_seconds") or "too little to be recognised reliably (a default, not measured).",
                   float(record.get("disagree_below", verification.threshold)),
                   record.get("why_disagree") or "its score against the others is below the verification threshold")


@dataclass(frozen=True)
class Decisions:
    score: str  # "cosine" or "as-norm"
    top_k: int  # AS-norm cohort scores per side
    identification: Rule
    verification: Rule
    slope: float  # P(known) = sigmoid(slope * (best score - identification threshold))
    temperature: float  # softmax temperature over the speakers' scores
    probability_method: str
    probability_calibrated: bool
    enrollment: EnrollmentRule | None = None

    @classmethod
    def from_calibration(cls, calibration: dict | None, has_cohort: bool, scale: float = 30.0) -> Decisions:
        """Read a checkpoint's calibration record (new or old format). `scale` is the margin head's s,
        whose softmax(s * cos) the old probabilities were."""
        calibration = calibration or {}
        old_threshold = calibration.get("threshold")
        score_record = calibration.get("score") or {}
        score = score_record.get("kind") or ("cosine" if old_threshold is not None or not has_cohort else "as-norm")
        if score not in SCORES:
            raise ValueError(f"calibration uses an unknown score {score!r}; known: {', '.join(SCORES)}")
        if score == "as-norm" and not has_cohort:
            raise ValueError("the calibration is for AS-norm scores, but the checkpoint carries no cohort")
        top_k = int(score_record.get("top_k", DEFAULT_TOP_K))
        if old_threshold is not None and "identification" not in calibration:
            method = calibration.get("method") or "calibrated clip-vs-clip"
            if calibration.get("eer") is not None:
                method += f" (equal error rate there: {float(calibration['eer']):.1%})"
            verification = Rule(float(old_threshold), method, True)
            identification = Rule(float(old_threshold), "the verification threshold, reused: not calibrated for "
                                  "clip-vs-speaker identification", False)
        else:
            identification = _rule(calibration.get("identification"), score)
            verification = _rule(calibration.get("verification"), score)
        probability = calibration.get("probability") or {}
        if probability.get("slope") is not None and probability.get("temperature") is not None:
            slope, temperature = float(probability["slope"]), float(probability["temperature"])
            method, fitted = probability.get("method") or "fitted on held-out trials", True
        else:
            slope, temperature = DEFAULT_SLOPE[score], (1 / scale if score == "cosine" else 1.0)
            method, fitted = "defaults, not fitted: a rough guide", False
        if not (slope > 0 and temperature > 0):
            raise ValueError(f"calibration needs a positive slope and temperature, got {slope}, {temperature}")
        enrollment = EnrollmentRule.from_record(calibration.get("enrollment"), verification)
        return cls(score, top_k, identification, verification, slope, temperature, method, fitted, enrollment)

    def scorer(self, cohort: torch.Tensor | None) -> Scorer:
        """The scorer these decisions are made on: AS-norm against the cohort, or cosine."""
        return Scorer(cohort if self.score == "as-norm" else None, self.top_k)

    def p_known(self, best_score: float, threshold: float | None = None) -> float:
        """Probability that the speaker is one of those compared with, from the best score and the threshold it
        had to reach (default: the identification threshold); at most 0.99."""
        threshold = self.identification.threshold if threshold is None else threshold
        z = self.slope * (best_score - threshold)
        return min(MAX_PROBABILITY, 1 / (1 + math.exp(-max(-60.0, min(60.0, z)))))

    def shares(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) scores of the candidate speakers -> (N,) softmax shares at the fitted temperature."""
        return (scores.double() / self.temperature).softmax(-1).float()


def _rule(record: dict | None, score: str) -> Rule:
    if not record or record.get("threshold") is None:
        return Rule(DEFAULT_THRESHOLD[score], f"a default for {score} scores: this checkpoint is not calibrated", False)
    known = record.get("known_threshold")
    ranges = {kind: (float(low), float(high)) for kind, (low, high) in record.get("seconds_range", {}).items()}
    by_size = tuple((int(n), float(t)) for n, t in record.get("gallery_thresholds") or [])
    if any(n < 1 for n, _ in by_size) or [n for n, _ in by_size] != sorted({n for n, _ in by_size}):
        raise ValueError(f"gallery_thresholds must be (size >= 1, threshold) pairs of rising sizes, got {by_size}")
    return Rule(float(record["threshold"]), record.get("method") or "calibrated", True, record.get("rule") or "",
                None if known is None else float(known), float(record.get("per_log_test_seconds", 0.0)),
                float(record.get("per_log_enroll_seconds", 0.0)), ranges or None, by_size or None)
