"""The identification rule calibrated with speakers enrolled: galleries of 1 to 100 unseen speakers.

The calibration half's unseen speakers are dealt as the gallery scenario deals them
(`training.gallery_scenario.plan`: per source, half enrolled, half strangers) for every
enrollment (1, 3 or 5 clips, one recording), and galleries of GALLERY_SIZES of the enrolled
half are drawn. Each test clip (an enrolled speaker's next clips, a stranger's clips, a known
speaker's validation clip) is scored as the app scores it, against the model's speakers and the
gallery, and its best candidate is kept: who, the score, and what is known when deciding (the
clip's seconds of speech; the candidate's enrollment seconds; the gallery's size).

The rule names the best candidate when its score reaches a threshold: for the model's own
speakers, the highest one that still names `min_known_correct` of their validation clips
correctly; for enrolled speakers, `threshold(gallery size) + a * log(test s / 3) + b * log(enrollment s / 15)`
where (a, b) come from a grid (a = b = 0 is a plain threshold). One threshold names at most
`max_strangers_named` of the strangers' clips in galleries of every size (the largest decide); a
gallery size may go lower, to the lowest threshold that names at most a quarter of that share of
its own strangers' clips (SIZE_SHARE), never lower than a smaller gallery's: a stranger meets
fewer voices in a small gallery, so a visitor enrolled alone is named at a far lower threshold
than a gallery of 80 needs. The app
interpolates between the calibrated sizes (`decisions.Rule.for_gallery`). The (a, b) that names
the most enrolled speakers' clips correctly wins. Both terms hold the seconds to
the range the calibration saw (`seconds_ranges`: where the middle 98 % of its test clips' and
enrollments' seconds lie), here and in the app, so a longer clip than any it saw is not given a
threshold nobody measured.
"""

from __future__ import annotations

import math
import random
import sys
from typing import NamedTuple

import torch

from speaker_app.decisions import REFERENCE_SECONDS
from speaker_app.scoring import Scorer, centroid

from .data import source_of
from .dev_clips import Clips
from .gallery_scenario import ENROLLMENTS, plan

GALLERY_SIZES = (1, 3, 10, 30, 100)
DRAWS = 3  # galleries drawn per size and enrollment
MAX_STRANGERS_NAMED, MIN_KNOWN_CORRECT = 0.02, 0.97
GRID = tuple(x / 4 for x in range(-4, 9))  # candidate a and b: the threshold's change per unit of log seconds
# A gallery size's own threshold rests on its few drawn galleries (whose enrolled voices decide how often strangers
# are named), so it keeps a margin: a quarter of the strangers' share. At the full share, the test half's small
# galleries named 3-5% of strangers' clips against the 2% calibrated (bench/notes/2026-12-07-gallery-size.md).
SIZE_SHARE = 0.25
RANGE_QUANTILES = (0.01, 0.99)  # the seconds terms hold to where the middle 98 % of calibration's seconds lie


class Answers(NamedTuple):
    """The best candidate of each test clip of every simulated gallery (N clips in all)."""
    best: torch.Tensor  # (N,) its score
    enrolled: torch.Tensor  # (N,) bool: it is an enrolled speaker (else one of the model's own)
    correct: torch.Tensor  # (N,) bool: it is the clip's own speaker
    kind: torch.Tensor  # (N,) 0: an enrolled speaker's clip, 1: a stranger's, 2: a known speaker's
    log_test: torch.Tensor  # (N,) log(clip seconds / reference), the seconds within the calibration's range
    log_enroll: torch.Tensor  # (N,) log(enrollment seconds / reference) of the best candidate; 0 for known ones
    gallery: torch.Tensor  # (N,) how many speakers were enrolled
    own_enroll_seconds: torch.Tensor  # (N,) an enrolled speaker's clip: its own speaker's enrollment seconds; else NaN
    enrollment: list[str]  # (N,) which enrollment


TARGET, STRANGER, KNOWN = 0, 1, 2


def log_ratio(seconds: torch.Tensor, kind: str, bounds: tuple[float, float]) -> torch.Tensor:
    return (seconds.clamp(*bounds) / REFERENCE_SECONDS[kind]).log()


def plans(unseen: Clips, seed: int = 0) -> dict:
    """{enrollment: the scenario's plan of the unseen speakers}."""
    seconds, usable = unseen.seconds.tolist(), unseen.speech.tolist()
    return {e: plan(unseen.speakers, unseen.keys, seconds, e, seed, usable=usable) for e in ENROLLMENTS}


def seconds_ranges(unseen: Clips, seed: int = 0) -> dict[str, tuple[float, float]]:
    """{"test": (low, high), "enroll": (low, high)}: where the middle 98 % of the seconds of speech lie, of the
    clips tested (those that pass the speech check) and of the enrollments the galleries are made of."""
    tested = unseen.seconds[unseen.speech].double()
    enrolled = torch.tensor([float(unseen.seconds[rows].sum()) for p in plans(unseen, seed).values()
                             for rows in p.enrolled.values()], dtype=torch.float64)
    return {kind: tuple(float(q) for q in torch.quantile(values, torch.tensor(RANGE_QUANTILES, dtype=torch.float64)))
            for kind, values in (("test", tested), ("enroll", enrolled))}


def simulate(scorer: Scorer, prototypes: torch.Tensor, known: Clips, known_labels: torch.Tensor, unseen: Clips,
             sizes=GALLERY_SIZES, draws: int = DRAWS, seed: int = 0, ranges: dict | None = None) -> Answers:
    """Every enrollment x gallery size x draw: the best candidate of each test clip (speech clips only), its
    seconds held to `ranges` (default: `seconds_ranges(unseen)`)."""
    ranges = ranges or seconds_ranges(unseen, seed)
    parts = []
    for enrollment, the_plan in plans(unseen, seed).items():
        half = sorted(the_plan.enrolled)
        for size in sorted({min(s, len(half)) for s in sizes} - {0}):
            for draw in range(draws):
                chosen = sorted(random.Random(f"{seed}/{enrollment}/{size}/{draw}").sample(half, size))
                parts.append(_gallery(scorer, prototypes, known, known_labels, unseen, the_plan, chosen, ranges)
                             + (enrollment,))
    return Answers(*(torch.cat([p[i] for p in parts]) for i in range(8)),
                   [p[8] for p in parts for _ in range(len(p[0]))])


def _gallery(scorer, prototypes, known, known_labels, unseen, the_plan, chosen, ranges) -> tuple:
    """One gallery of `chosen` enrolled speakers: the answers of its targets, all strangers and the known clips."""
    prints = torch.stack([centroid(unseen.embeddings[the_plan.enrolled[s]]) for s in chosen])
    clip_rows = [r for s in chosen for r in the_plan.enrolled[s]]
    owners = torch.tensor([len(prototypes) + j for j, s in enumerate(chosen) for _ in the_plan.enrolled[s]])
    enroll_seconds = torch.tensor([float(unseen.seconds[the_plan.enrolled[s]].sum()) for s in chosen])
    index = {s: len(prototypes) + j for j, s in enumerate(chosen)}
    targets = [r for r in the_plan.targets if unseen.speakers[r] in index]
    rows = targets + the_plan.strangers
    embeddings = torch.cat([unseen.embeddings[rows], known.embeddings])
    truth = torch.tensor([index[unseen.speakers[r]] for r in targets] + [-1] * len(the_plan.strangers)
                         + known_labels.tolist())
    kind = torch.tensor([TARGET] * len(targets) + [STRANGER] * len(the_plan.strangers) + [KNOWN] * len(known_labels))
    speech = torch.cat([unseen.speech[rows], known.speech])
    test_seconds = torch.cat([unseen.seconds[rows], known.seconds])
    candidates = torch.cat([prototypes, prints])
    scores = scorer.score_speakers(embeddings, candidates, unseen.embeddings[clip_rows], owners)
    best, arg = scores.max(-1)
    is_enrolled = arg >= len(prototypes)
    log_enroll = torch.where(is_enrolled,
                             log_ratio(enroll_seconds, "enroll", ranges["enroll"])[(arg - len(prototypes)).clamp(min=0)],
                             torch.zeros(()))
    own = torch.cat([enroll_seconds[[index[unseen.speakers[r]] - len(prototypes) for r in targets]],
                     torch.full((len(rows) - len(targets) + len(known_labels),), math.nan)])
    keep = speech  # clips that fail the speech check are never named, as in the app
    return tuple(x[keep] for x in (best, is_enrolled, arg == truth, kind, log_ratio(test_seconds, "test", ranges["test"]),
                                   log_enroll, torch.full_like(best, len(chosen)), own))


class Choice(NamedTuple):
    threshold: float  # enrolled speakers', at the reference durations (the largest gallery's with by_size)
    known_threshold: float
    per_log_test_seconds: float
    per_log_enroll_seconds: float
    by_size: tuple[tuple[int, float], ...] = ()  # (gallery size, enrolled speakers' threshold) per calibrated size


def named(answers: Answers, choice: Choice) -> torch.Tensor:
    """(N,) bool: the best candidate is named under `choice`."""
    enrolled = adjusted(answers, choice.per_log_test_seconds, choice.per_log_enroll_seconds) >= thresholds_of(
        answers, choice)
    return torch.where(answers.enrolled, enrolled, answers.best.double() >= choice.known_threshold)


def thresholds_of(answers: Answers, choice: Choice) -> torch.Tensor:
    """(N,) float64: the enrolled speakers' threshold at the reference durations in each answer's gallery."""
    if not choice.by_size:
        return torch.full(answers.best.shape, choice.threshold, dtype=torch.float64)
    table = dict(choice.by_size)
    return torch.tensor([table[int(n)] for n in answers.gallery.tolist()], dtype=torch.float64)


def adjusted(answers: Answers, a: float, b: float) -> torch.Tensor:
    """(N,) float64: each best score less its seconds terms, to compare with the threshold at the reference."""
    return answers.best.double() - a * answers.log_test.double() - b * answers.log_enroll.double()


def measured(answers: Answers, choice: Choice, mask: torch.Tensor | None = None) -> dict:
    """Shares of enrolled speakers' clips named correctly and wrongly, strangers' clips named and known speakers'
    clips named correctly (of the clips `mask` keeps)."""
    keep = torch.ones_like(answers.correct) if mask is None else mask
    said = named(answers, choice)

    def share(kind, hit):
        rows = keep & (answers.kind == kind)
        return float((hit & rows).sum() / rows.sum()) if rows.any() else math.nan

    return {"enrolled_correct": share(TARGET, said & answers.correct),
            "enrolled_wrong": share(TARGET, said & ~answers.correct),
            "strangers_named": share(STRANGER, said), "known_correct": share(KNOWN, said & answers.correct)}


def known_threshold(answers: Answers, min_known_correct: float) -> float:
    """The highest threshold on the model's own speakers that names at least that share of their clips correctly.
    A model whose top-1 falls short of it gives up one point of what it can reach (with a warning)."""
    rows = answers.kind == KNOWN
    right = answers.best[rows & answers.correct & ~answers.enrolled].double().sort(descending=True).values
    needed = math.ceil(min_known_correct * int(rows.sum()) - 1e-9)
    if needed > len(right):
        reachable = len(right) / max(int(rows.sum()), 1)
        needed = len(right) - math.ceil(0.01 * int(rows.sum()))
        print(f"warning: no threshold names {min_known_correct:.0%} of the known speakers' clips correctly (top-1 "
              f"{reachable:.1%}); the rule names {needed / int(rows.sum()):.1%}", file=sys.stderr)
    if needed <= 0:
        raise ValueError("the known speakers' clips are too few, or too rarely named correctly, to set a threshold")
    lower = float(right[needed]) if needed < len(right) else float(right[-1]) - 1.0
    return (float(right[needed - 1]) + lower) / 2


def enrolled_thresholds(answers: Answers, known: float, a: float, b: float, max_strangers_named: float,
                        strict: bool = True) -> dict[int, float]:
    """{gallery size: the lowest enrolled speakers' threshold (at the reference) that names at most that share of
    its strangers' clips, those named as a known speaker at `known` included}, never lower for a larger gallery
    (whose strangers meet more voices). A size whose strangers the known speakers' threshold alone names more
    often than that is an error, or with `strict` False gets an infinite threshold (no lowering there)."""
    statistic = adjusted(answers, a, b)
    strangers = answers.kind == STRANGER
    by_known = strangers & ~answers.enrolled & (answers.best >= known)
    needed, highest = {}, -math.inf
    for size in sorted({int(n) for n in answers.gallery.tolist()}):
        rows = strangers & (answers.gallery == size)
        allowed = math.floor(max_strangers_named * int(rows.sum()) + 1e-9) - int((by_known & rows).sum())
        stat = statistic[rows & answers.enrolled].sort(descending=True).values
        if allowed < 0:
            if strict:
                raise ValueError("the known speakers' threshold alone names more strangers than allowed")
            lowest = math.inf
        elif allowed >= len(stat):
            lowest = float(stat[-1]) - 1.0 if len(stat) else -math.inf
        else:
            lowest = float(torch.nextafter(stat[allowed], torch.tensor(math.inf, dtype=torch.float64)))
        highest = max(highest, lowest)
        needed[size] = highest
    # Small galleries whose strangers never had an enrolled best candidate: the lowest threshold measured.
    finite = [t for t in needed.values() if math.isfinite(t)]
    return {size: min(finite, default=0.0) if t == -math.inf else t for size, t in needed.items()}


def choose(answers: Answers, max_strangers_named: float = MAX_STRANGERS_NAMED,
           min_known_correct: float = MIN_KNOWN_CORRECT, grid=GRID, by_size: bool = True) -> tuple[Choice, list[dict]]:
    """The rule, and every (a, b) tried with what it measured (the ablation). One threshold names at most
    `max_strangers_named` of the strangers' clips in galleries of every size; with `by_size`, each size may go
    lower, to where it names at most SIZE_SHARE of that share of its own strangers' clips."""
    known = known_threshold(answers, min_known_correct)
    tried = []
    for a in grid:
        for b in grid:
            single = max(enrolled_thresholds(answers, known, a, b, max_strangers_named).values())
            sized = (enrolled_thresholds(answers, known, a, b, max_strangers_named * SIZE_SHARE, strict=False)
                     if by_size else {})
            choice = Choice(single, known, a, b, tuple((n, min(t, single)) for n, t in sorted(sized.items())))
            tried.append({"choice": choice, **measured(answers, choice)})
    # The most enrolled clips named correctly; on a tie the simpler rule (smaller terms) wins.
    best = max(tried, key=lambda t: (round(t["enrolled_correct"], 6), -abs(t["choice"].per_log_test_seconds)
                                     - abs(t["choice"].per_log_enroll_seconds)))
    return best["choice"], tried


def by_group(answers: Answers, choice: Choice) -> dict:
    """measured() per gallery size and per enrollment."""
    sizes = {f"{int(n)} enrolled": measured(answers, choice, answers.gallery == n)
             for n in sorted(set(answers.gallery.tolist()))}
    enrollments = {e: measured(answers, choice, torch.tensor([x == e for x in answers.enrollment]))
                   for e in ENROLLMENTS if e in set(answers.enrollment)}
    return {"gallery_size": sizes, "enrollment": enrollments}


def sources(clips: Clips) -> list[str]:
    return sorted({source_of(s) for s in clips.speakers})


# -- advice for the person enrolling ---------------------------------------------------------------
ENROLL_BUCKETS = (0.0, 5.0, 10.0, 20.0)  # seconds of enrollment speech: lower edges


def enrollment_seconds_advice(answers: Answers, choice: Choice) -> dict:
    """How the share of enrolled speakers' clips named correctly grows with their enrollment's seconds of speech,
    and the least speech that comes within 90 % of the best bucket's share."""
    said = named(answers, choice) & answers.correct
    rows = answers.kind == TARGET
    edges = list(ENROLL_BUCKETS) + [math.inf]
    table = []
    for low, high in zip(edges[:-1], edges[1:]):
        bucket = rows & (answers.own_enroll_seconds >= low) & (answers.own_enroll_seconds < high)
        if bucket.sum() >= 20:
            table.append({"from_s": low, "to_s": high if math.isfinite(high) else None, "clips": int(bucket.sum()),
                          "named_correctly": float((said & bucket).sum() / bucket.sum())})
    if not table:
        return {}
    best = max(t["named_correctly"] for t in table)
    enough = next(t for t in table if t["named_correctly"] >= 0.9 * best)
    below = [t for t in table if t["to_s"] is not None and t["to_s"] <= enough["from_s"]]
    why = (f"in calibration galleries, speakers enrolled from less than {enough['from_s']:g} s of speech had "
           f"{sum(t['named_correctly'] * t['clips'] for t in below) / sum(t['clips'] for t in below):.0%} of their "
           f"later clips named correctly, against {enough['named_correctly']:.0%} from {enough['from_s']:g} s"
           if below else "")
    return {"min_seconds": enough["from_s"], "why_seconds": why + "." if why else "", "buckets": table}


def disagreement_advice(scorer: Scorer, unseen: Clips, clips: int = 5, quantile: float = 0.01) -> dict:
    """The leave-one-out score below which an enrollment clip is said not to sound like the others: the
    `quantile` of one speaker's clips' scores against the mean of their other clips; and how often a clip
    of another speaker put among them falls below it."""
    from speaker_app.recognizer import leave_one_out

    by_speaker: dict[str, list[int]] = {}
    for row, speaker in enumerate(unseen.speakers):
        if unseen.speech[row]:
            by_speaker.setdefault(speaker, []).append(row)
    groups = [sorted(rows, key=lambda r: unseen.keys[r])[:clips] for _, rows in sorted(by_speaker.items())
              if len(rows) >= clips]
    if len(groups) < 2:
        return {}
    same = torch.cat([leave_one_out(scorer, unseen.embeddings[rows]) for rows in groups])
    below = float(torch.quantile(same.double(), quantile))
    intruders = torch.stack([leave_one_out(scorer, unseen.embeddings[rows[:-1] + [groups[(i + 1) % len(groups)][0]]])[-1]
                             for i, rows in enumerate(groups)])
    caught = float((intruders < below).double().mean())
    return {"disagree_below": below, "caught": caught, "groups": len(groups),
            "why_disagree": f"its score against the others is below {below:.2f}, which {quantile:.0%} of one "
                            f"speaker's clips fall under; {caught:.0%} of other speakers' clips put among "
                            f"{clips - 1} of one speaker's do (calibration half, {len(groups)} speakers)"}
