"""The gallery scenario: the product's own protocol on voices a model never trained on.

Of a split's speakers, those with enough clips for an enrollment are shuffled per source
(seeded) and dealt alternately into two halves: one half is enrolled, the other half are
strangers. An enrolled speaker gives their first clips (by name) to `Recognizer.enroll`,
exactly as the Enroll tab does, and their next TEST_CLIPS clips are identified at the
checkpoint's shipped decisions; a stranger's first TEST_CLIPS clips are identified against
the same gallery (the model's own speakers and the enrolled ones). Enrollments:

- `1 clip`, `3 clips`, `5 clips`: that many clips;
- `one recording`: the first clips joined into one recording of 20 to 30 s of speech (cut at 30 s),
  as a visitor reads a paragraph into the microphone.

Outcomes per source and overall: enrolled speakers' clips named correctly, named as someone
else, or "unknown"; strangers' clips named as anyone. The DET trade-off (enrolled clips named
correctly when the threshold moves until 1 %, 2 % or 5 % of strangers' clips are named) comes
from each answer's margin to its threshold. A peer that has only embeddings (Resemblyzer) is
run on the same plan: cosine against the mean of its enrollment clips' embeddings, named when
the best reaches a threshold set on another split (`shift_for` of its outcomes there).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import NamedTuple

import torch

from speaker_app.recognizer import Identification, Recognizer
from speaker_app.scoring import centroid, cosine
from speaker_app.speech import check_speech

from .data import source_of

ENROLLMENTS = {"1 clip": 1, "3 clips": 3, "5 clips": 5, "one recording": 0}  # 0: one recording of joined clips
RECORDING_SECONDS = (20.0, 30.0)
TEST_CLIPS = 8
STRANGER_RATES = (0.01, 0.02, 0.05)


class Plan(NamedTuple):
    enrollment: str  # a key of ENROLLMENTS
    enrolled: dict[str, list[int]]  # speaker -> rows enrolled, in order
    targets: list[int]  # rows of the enrolled speakers' test clips
    strangers: list[int]  # rows of the strangers' clips


def enrollment_rows(rows: list[int], seconds: list[float], enrollment: str, usable=None) -> list[int] | None:
    """The first of a speaker's rows (in name order) that make the enrollment, leaving at least one to test;
    None if they cannot. Rows that `usable` marks False (clips the speech check refuses, which the app
    would not enroll) are passed over."""
    candidates = [r for r in rows if usable is None or usable[r]]
    count = ENROLLMENTS[enrollment]
    if count:
        return candidates[:count] if len(candidates) >= count and len(rows) > count else None
    total = 0.0
    for i, row in enumerate(candidates):
        total += seconds[row]
        if total >= RECORDING_SECONDS[0]:
            return candidates[: i + 1] if len(rows) > i + 1 else None
    return None


def plan(speakers: list[str], paths: list[str], seconds: list[float], enrollment: str, seed: int = 0,
         test_clips: int = TEST_CLIPS, usable=None) -> Plan:
    """Deal the speakers of clips (speakers[i], paths[i], seconds[i]) who can make `enrollment` into an enrolled
    half and a stranger half, per source; usable[i] False: the clip is never enrolled (it may be tested)."""
    by_speaker = defaultdict(list)
    for row, speaker in enumerate(speakers):
        by_speaker[speaker].append(row)
    eligible = defaultdict(list)
    for speaker, rows in sorted(by_speaker.items()):
        rows.sort(key=lambda r: paths[r])
        if enrollment_rows(rows, seconds, enrollment, usable) is not None:
            eligible[source_of(speaker)].append(speaker)
    enrolled, targets, strangers = {}, [], []
    for source, group in sorted(eligible.items()):
        random.Random(f"{seed}/{source}").shuffle(group)
        for speaker in sorted(group[0::2]):
            rows = by_speaker[speaker]
            enrolled[speaker] = enrollment_rows(rows, seconds, enrollment, usable)
            targets += [r for r in rows if r not in enrolled[speaker]][:test_clips]
        for speaker in sorted(group[1::2]):
            strangers += by_speaker[speaker][:test_clips]
    return Plan(enrollment, enrolled, targets, strangers)


def recording(features: list[torch.Tensor], frame_seconds: float) -> torch.Tensor:
    """Clips' (T_i, F) features joined into one recording of at most RECORDING_SECONDS[1] of speech."""
    return torch.cat(features)[: round(RECORDING_SECONDS[1] / frame_seconds)]


# -- ours, through the recognizer ----------------------------------------------------------------
def enroll_plan(recognizer: Recognizer, the_plan: Plan, features: list[torch.Tensor]) -> dict[str, str]:
    """Enroll each planned speaker through `recognizer.enroll` (its gallery must be empty): {speaker: name}."""
    names = {}
    frame_seconds = recognizer.features_config.frame_seconds
    for i, (speaker, rows) in enumerate(sorted(the_plan.enrolled.items())):
        sources = [features[r] for r in rows]
        if not ENROLLMENTS[the_plan.enrollment]:
            sources = [recording(sources, frame_seconds)]
        names[speaker] = recognizer.enroll(f"enrolled {i}", sources)
    return names


def answers(recognizer: Recognizer, rows: list[int], embeddings: torch.Tensor, logits: torch.Tensor,
            features: list[torch.Tensor]) -> dict[int, Identification]:
    """The app's answer for each row, from its embedding and features (the speech check, the seconds)."""
    frame_seconds = recognizer.features_config.frame_seconds
    return {r: recognizer.decide(embeddings[r], logits[r], len(features[r]) * frame_seconds, [], 5,
                                 check_speech(features[r])) for r in rows}


class Outcome(NamedTuple):
    """Per answered row: who it was, who was named (None: unknown) and the margin to the threshold."""
    speaker: str  # the clip's speaker
    truth: str | None  # the name it should get (None: a stranger)
    named: str | None
    best: str  # the best-scoring candidate
    margin: float  # best score minus its threshold; named exactly when >= 0 (and speech)


def outcomes(the_plan: Plan, speakers: list[str], said: dict[int, Identification], names: dict[str, str]) -> list[Outcome]:
    rows = [(r, names[speakers[r]]) for r in the_plan.targets] + [(r, None) for r in the_plan.strangers]
    out = []
    for row, truth in rows:
        answer = said[row]
        top = answer.matches[0].name if answer.matches else ""
        margin = answer.margin if answer.speech else -math.inf
        out.append(Outcome(speakers[row], truth, answer.best.name if answer.best else None, top, margin))
    return out


# -- a peer with embeddings only -----------------------------------------------------------------
def peer_outcomes(the_plan: Plan, speakers: list[str], embeddings: torch.Tensor, threshold: float = 0.0) -> list[Outcome]:
    """Cosine of each test clip against the mean of each enrolled speaker's enrollment embeddings, named at
    `threshold`."""
    enrolled = sorted(the_plan.enrolled)
    if not enrolled:
        return []
    prints = torch.stack([centroid(embeddings[the_plan.enrolled[s]]) for s in enrolled])
    rows = [(r, speakers[r]) for r in the_plan.targets] + [(r, None) for r in the_plan.strangers]
    scores = cosine(embeddings[[r for r, _ in rows]], prints)
    best, index = scores.max(-1)
    out = []
    for (row, truth), score, i in zip(rows, best.tolist(), index.tolist()):
        named = enrolled[i] if score >= threshold else None
        out.append(Outcome(speakers[row], truth, named, enrolled[i], score - threshold))
    return out


def shift_for(outcomes_: list[Outcome], stranger_rate: float) -> float:
    """The lowest threshold shift that names at most `stranger_rate` of the strangers' clips."""
    margins = sorted((o.margin for o in outcomes_ if o.truth is None), reverse=True)
    allowed = math.floor(stranger_rate * len(margins) + 1e-9)
    return math.nextafter(margins[allowed], math.inf) if allowed < len(margins) else -math.inf


# -- rates ---------------------------------------------------------------------------------------
def rates(outcomes_: list[Outcome], shift: float = 0.0) -> dict[str, dict]:
    """{source or "all": {"correct", "wrong", "unknown": shares of enrolled speakers' clips, "strangers_named":
    share of strangers' clips, "targets", "strangers": clips}} with every threshold raised by `shift`."""
    groups = defaultdict(lambda: {"correct": 0, "wrong": 0, "unknown": 0, "named": 0, "targets": 0, "strangers": 0})
    for o in outcomes_:
        who = o.best if o.margin >= shift else None
        for group in (source_of(o.speaker), "all"):
            g = groups[group]
            if o.truth is None:
                g["strangers"] += 1
                g["named"] += who is not None
            else:
                g["targets"] += 1
                g["correct" if who == o.truth else "unknown" if who is None else "wrong"] += 1
    return {group: {"correct": g["correct"] / g["targets"] if g["targets"] else math.nan,
                    "wrong": g["wrong"] / g["targets"] if g["targets"] else math.nan,
                    "unknown": g["unknown"] / g["targets"] if g["targets"] else math.nan,
                    "strangers_named": g["named"] / g["strangers"] if g["strangers"] else math.nan,
                    "targets": g["targets"], "strangers": g["strangers"]}
            for group, g in sorted(groups.items(), key=lambda item: (item[0] == "all", item[0]))}


def trade_off(outcomes_: list[Outcome], stranger_rates=STRANGER_RATES) -> dict[float, float]:
    """{share of strangers' clips named: share of enrolled speakers' clips named correctly} as the threshold moves."""
    return {rate: rates(outcomes_, shift_for(outcomes_, rate))["all"]["correct"] for rate in stranger_rates}
