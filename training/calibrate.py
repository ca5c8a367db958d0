"""Calibrate a checkpoint's decisions on speakers it never trained on, and store how.

    python -m training.calibrate --checkpoint CKPT --audio-dir DEV_DIR [--speakers LIST --split calibration]
        [--include GLOB] [--exclude GLOB] [--known-data PREPARED_DIR | --speech ../shared/speech]
        [--cohort-dir DIR [--cohort-include GLOB]] [--score auto|cosine|as-norm] [--top-k K]
        [--max-unseen-named 0.10] [--min-known-correct 0.95] --out CKPT_OUT

Trials:
- identification (clip vs speaker): targets are held-out clips of the model's own
  speakers (`--known-data`'s test split, else the checkpoint's
  `info["training_data"]["held_out_clips"]` under `--speech`) against every
  prototype: a clip is named correctly when its own speaker scores best and the
  score reaches the threshold. Impostors are the unseen speakers' clips: each is
  named (wrongly) when its best score over all known speakers reaches it.
- verification (clip vs clip): every pair of the unseen speakers' clips.

The identification threshold meets both goals when it can: at most
`--max-unseen-named` of the unseen clips named, at least `--min-known-correct`
of the known clips named correctly; it sits midway in the range of thresholds
that meet both. When no threshold meets both, the unseen goal wins: the lowest
threshold that names at most that share of unseen clips. The verification
threshold is the equal-error-rate point. P(known) = sigmoid(slope * (best score -
identification threshold)) takes its slope from a class-balanced logistic fit on
the identification trials' best scores, and the softmax temperature over speakers
minimises the known clips' negative log-likelihood. Clips that fail the speech
check (speaker_app.speech) are never named, as in the app, and are left out of the fits.

Scores are AS-norm against the checkpoint's cohort when it carries one (or
`--cohort-dir` builds one: the mean embedding of each of those speakers,
leaving out the unseen and known speakers), else cosine. Everything lands in
`info["calibration"]` of the --out checkpoint, each decision with its trials,
speakers, sources and goals.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from speaker_app.scoring import DEFAULT_TOP_K, Scorer, centroid, equal_error_rate, min_dcf

from . import gallery_calibration
from .data import source_of
from .dev_clips import Clips, audio_clips, embed_clips, known_clips, read_speaker_list

MAX_UNSEEN_NAMED = 0.10  # with nobody enrolled (issue 15's goal)
MAX_STRANGERS_NAMED, MIN_KNOWN_CORRECT = 0.02, 0.97  # with galleries: strangers' clips named, known clips named right
MAX_CLIPS = 20  # per unseen speaker: many speakers matter more than many clips of one
MAX_PAIR_CLIPS = 4000  # clip-vs-clip trials grow with the square


# -- identification ------------------------------------------------------------------------------
class OpenSet(NamedTuple):
    known_best: torch.Tensor  # (Nk,) best score over the model's speakers; -inf where no speech
    known_correct: torch.Tensor  # (Nk,) bool: the clip's own speaker scored best
    known_own: torch.Tensor  # (Nk,) score against the clip's own speaker
    unseen_best: torch.Tensor  # (Nu,) best score over the model's speakers; -inf where no speech
    known_scores: torch.Tensor  # (Nk, S) all scores of the known clips
    known_labels: torch.Tensor  # (Nk,) class index of each known clip


def open_set_trials(scorer: Scorer, prototypes: torch.Tensor, speakers: list[str], known: Clips,
                    unseen: Clips) -> OpenSet:
    """Clip-vs-speaker scores of known held-out clips and unseen speakers' clips against every prototype."""
    index = {name: i for i, name in enumerate(speakers)}
    strangers = sorted({s for s in known.speakers if s not in index})
    if strangers:
        raise SystemExit(f"error: known clips of speakers the model does not have: {', '.join(strangers[:3])}")
    labels = torch.tensor([index[s] for s in known.speakers])
    stats = scorer.stats(prototypes)
    known_scores = scorer.score(known.embeddings, prototypes, right_stats=stats)
    unseen_scores = scorer.score(unseen.embeddings, prototypes, right_stats=stats)
    silent = torch.tensor(-math.inf)
    return OpenSet(torch.where(known.speech, known_scores.max(-1).values, silent),
                   known_scores.argmax(-1) == labels, known_scores.gather(1, labels[:, None])[:, 0],
                   torch.where(unseen.speech, unseen_scores.max(-1).values, silent), known_scores, labels)


def open_set_rates(trials: OpenSet, threshold: float) -> dict:
    """Shares of unseen clips named (wrongly), known clips named correctly, named wrongly and not named."""
    named = trials.known_best >= threshold
    return {"unseen_named": float((trials.unseen_best >= threshold).double().mean()),
            "known_correct": float((named & trials.known_correct).double().mean()),
            "known_wrong": float((named & ~trials.known_correct).double().mean()),
            "known_not_named": float((~named).double().mean())}


def choose_identification_threshold(trials: OpenSet, max_unseen_named: float = MAX_UNSEEN_NAMED,
                                    min_known_correct: float = MIN_KNOWN_CORRECT) -> tuple[float, str]:
    """The identification threshold and the rule that chose it (see the module docstring)."""
    unseen = trials.unseen_best.double().sort(descending=True).values
    correct = trials.known_best[trials.known_correct].double().sort(descending=True).values
    finite = torch.cat([unseen, correct, trials.known_best.double()])
    finite = finite[torch.isfinite(finite)]
    if not len(finite):
        raise SystemExit("error: no clip passed the speech check; nothing to calibrate on")
    allowed = math.floor(max_unseen_named * len(unseen) + 1e-9)  # unseen clips that may be named
    # Thresholds above `low` name at most `allowed` unseen clips; thresholds up to `high` name enough known clips.
    low = float(unseen[allowed]) if allowed < len(unseen) else -math.inf
    low = low if math.isfinite(low) else float(finite.min()) - 1.0
    needed = math.ceil(min_known_correct * len(trials.known_best) - 1e-9)
    high = float(correct[needed - 1]) if 0 < needed <= len(correct) else -math.inf
    goals = (f"at most {max_unseen_named:.0%} of unseen speakers' clips named, at least {min_known_correct:.0%} "
             f"of the known speakers' held-out clips named correctly")
    if low < high:
        return (low + high) / 2, f"midway in the range of thresholds that meet both goals ({goals})"
    above = finite[finite > low]
    threshold = (low + float(above.min())) / 2 if len(above) else math.nextafter(low, math.inf)
    return threshold, (f"no threshold meets both goals ({goals}): the lowest threshold that names at most "
                       f"{max_unseen_named:.0%} of the unseen speakers' clips")


def per_source_rates(trials: OpenSet, threshold: float, known: Clips, unseen: Clips) -> dict:
    """{source: {"unseen_named" | "known_correct": share, "n": clips}} at the threshold."""
    rows: dict[str, dict] = {}
    named_unseen = (trials.unseen_best >= threshold).tolist()
    for name, hits in (("unseen_named", zip(unseen.speakers, named_unseen)),
                       ("known_correct", zip(known.speakers, ((trials.known_best >= threshold)
                                                              & trials.known_correct).tolist()))):
        counts = defaultdict(lambda: [0, 0])
        for speaker, hit in hits:
            counts[source_of(speaker)][0] += hit
            counts[source_of(speaker)][1] += 1
        for source, (k, n) in counts.items():
            rows.setdefault(source, {})[name] = {"rate": k / n, "clips": n}
    return dict(sorted(rows.items()))


# -- verification --------------------------------------------------------------------------------
def pair_trials(scorer: Scorer, clips: Clips, max_clips: int = MAX_PAIR_CLIPS, seed: int = 0):
    """(P,) scores and (P,) same-speaker labels of every pair of speech clips (at most max_clips, seeded)."""
    keep = torch.nonzero(clips.speech)[:, 0]
    keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:max_clips]].sort().values
    index = {name: i for i, name in enumerate(sorted(set(clips.speakers)))}
    labels = torch.tensor([index[clips.speakers[i]] for i in keep.tolist()])
    scores = scorer.score(clips.embeddings[keep], clips.embeddings[keep])
    upper = torch.triu(torch.ones_like(scores, dtype=torch.bool), diagonal=1)
    return scores[upper], (labels[:, None] == labels[None, :])[upper]


# -- probabilities -------------------------------------------------------------------------------
def fit_slope(margins: torch.Tensor, known: torch.Tensor, iterations: int = 50) -> float:
    """a > 0 maximising the class-balanced likelihood of sigmoid(a * margin) for labels `known` (N,) bool;
    margins (N,) = best score - identification threshold. Newton's method on one convex parameter."""
    x, y = margins.double(), known.double()
    if y.all() or not y.any():
        raise ValueError("fitting P(known) needs clips of both known and unseen speakers")
    weight = torch.where(known, 0.5 / y.sum(), 0.5 / (1 - y).sum())
    a = 1.0 / max(float(x.abs().mean()), 1e-6)
    for _ in range(iterations):
        p = torch.sigmoid(a * x)
        gradient = float((weight * (p - y) * x).sum())
        hessian = float((weight * p * (1 - p) * x * x).sum()) + 1e-12
        step = gradient / hessian
        a = max(a - step, a / 10)  # stay positive: a higher score never means less likely known
        if abs(step) < 1e-9 * max(1.0, a):
            break
    return a


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """T minimising the negative log-likelihood of softmax(scores / T) (N, S) at labels (N,):
    a golden-section search on log T."""
    def loss(log_t: float) -> float:
        return float(F.cross_entropy(scores.double() / math.exp(log_t), labels))

    low, high = -9.0, 5.0
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(a) < loss(b):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)


# -- cohort --------------------------------------------------------------------------------------
def cohort_from_clips(clips: Clips) -> torch.Tensor:
    """(K, E) unit mean embedding of each speaker's speech clips."""
    by_speaker = defaultdict(list)
    for i, speaker in enumerate(clips.speakers):
        if clips.speech[i]:
            by_speaker[speaker].append(i)
    return torch.stack([centroid(clips.embeddings[rows]) for _, rows in sorted(by_speaker.items())])


# -- the record ----------------------------------------------------------------------------------
def speakers_and_sources(*sets: Clips) -> dict:
    speakers = sorted({s for clips in sets for s in clips.speakers})
    return {"speakers": len(speakers), "sources": sorted({source_of(s) for s in speakers})}


def gallery_identification(trials: OpenSet, prototypes: torch.Tensor, scorer: Scorer, known: Clips, unseen: Clips,
                           max_strangers_named: float, min_known_correct: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The identification record of the gallery-calibrated rule (training.gallery_calibration), and the
    margins (best score minus its threshold) and labels (1: a clip of a speaker in the gallery, named
    correctly; 0: a stranger's) that P(known) is fitted on."""
    ranges = gallery_calibration.seconds_ranges(unseen)
    answers = gallery_calibration.simulate(scorer, prototypes, known, trials.known_labels, unseen, ranges=ranges)
    choice, tried = gallery_calibration.choose(answers, max_strangers_named, min_known_correct)
    one, _ = gallery_calibration.choose(answers, max_strangers_named, min_known_correct, by_size=False)
    rates = gallery_calibration.measured(answers, choice)
    plain = max((t for t in tried if not t["choice"].per_log_test_seconds and not t["choice"].per_log_enroll_seconds),
                key=lambda t: t["enrolled_correct"])
    sizes = sorted({int(n) for n in answers.gallery.tolist()})
    terms = (f"; it moves by {choice.per_log_test_seconds:+.2f} per unit of log(clip seconds / 3) and "
             f"{choice.per_log_enroll_seconds:+.2f} per unit of log(enrollment seconds / 15), the seconds held to "
             f"{ranges['test'][0]:.1f}-{ranges['test'][1]:.1f} s and {ranges['enroll'][0]:.1f}-{ranges['enroll'][1]:.1f} s"
             if choice.per_log_test_seconds or choice.per_log_enroll_seconds else "")
    known_goal = (f"at least {min_known_correct:.0%}" if rates["known_correct"] >= min_known_correct
                  else f"{rates['known_correct']:.1%} (its top-1 falls short of {min_known_correct:.0%})")
    steps = ", ".join(f"{t:.2f} for {n}" for n, t in choice.by_size)
    rule = (f"two thresholds, set with 1 to {sizes[-1]} unseen speakers enrolled: the model's speakers' names "
            f"{known_goal} of their validation clips correctly, the enrolled speakers' (the lowest that names at "
            f"most {max_strangers_named:.0%} of strangers' clips in galleries of every size, lower for a gallery "
            f"whose own strangers allow it at a quarter of that: {steps} enrolled) names the most enrolled "
            f"speakers' clips correctly among {len(tried)} rules{terms}")
    unseen_info = speakers_and_sources(unseen)
    record = {
        "threshold": choice.threshold, "known_threshold": choice.known_threshold,
        "per_log_test_seconds": choice.per_log_test_seconds,
        "per_log_enroll_seconds": choice.per_log_enroll_seconds, "rule": rule,
        "gallery_thresholds": [list(pair) for pair in choice.by_size],
        "seconds_range": {kind: list(bounds) for kind, bounds in ranges.items()},
        "method": (f"{rule}; measured on galleries of {', '.join(map(str, sizes))} of {unseen_info['speakers']} unseen "
                   f"speakers ({', '.join(unseen_info['sources'])}) enrolled from 1, 3 or 5 clips or one "
                   f"recording, with the other half of them as strangers, {DRAWS_TEXT}: "
                   f"{rates['enrolled_correct']:.1%} of enrolled speakers' clips named correctly, "
                   f"{rates['enrolled_wrong']:.1%} wrongly, {rates['strangers_named']:.1%} of strangers' clips named, "
                   f"{rates['known_correct']:.1%} of the known speakers' clips named correctly"),
        "goals": {"max_strangers_named": max_strangers_named, "min_known_correct": min_known_correct},
        "measured": rates, "plain_threshold": {"threshold": plain["choice"].threshold,
                                               **{k: v for k, v in plain.items() if k != "choice"}},
        "one_threshold_for_all_sizes": {"threshold": one.threshold, **gallery_calibration.measured(answers, one),
                                        "by_gallery_size": gallery_calibration.by_group(answers, one)["gallery_size"]},
        "by": gallery_calibration.by_group(answers, choice),
        "trials": {"answers": len(answers.best), "galleries": len(set(zip(answers.gallery.tolist(), answers.enrollment))),
                   "known_clips": len(known.speakers), "unseen_clips": len(unseen.speakers)},
        "unseen": unseen_info, "known": speakers_and_sources(known),
    }
    thresholds = torch.where(answers.enrolled, gallery_calibration.thresholds_of(answers, choice)
                             + choice.per_log_test_seconds * answers.log_test
                             + choice.per_log_enroll_seconds * answers.log_enroll,
                             torch.tensor(choice.known_threshold, dtype=torch.float64))
    fitted = (answers.kind == gallery_calibration.STRANGER) | answers.correct
    return record, (answers.best - thresholds).float()[fitted], (answers.kind != gallery_calibration.STRANGER)[fitted], \
        gallery_calibration.enrollment_seconds_advice(answers, choice)


DRAWS_TEXT = f"{gallery_calibration.DRAWS} galleries drawn per size and enrollment"


def plain_identification(trials: OpenSet, known: Clips, unseen: Clips, max_unseen_named: float,
                         min_known_correct: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One threshold on the best score, with nobody enrolled (the rule before galleries; for unseen sets that
    cannot make one), its record, and the margins and labels P(known) is fitted on."""
    threshold, rule = choose_identification_threshold(trials, max_unseen_named, min_known_correct)
    measured = open_set_rates(trials, threshold)
    speech_known, speech_unseen = known.speech, unseen.speech
    unseen_info, known_info = speakers_and_sources(unseen), speakers_and_sources(known)
    trials_info = {"known_clips": len(known.speakers), "unseen_clips": len(unseen.speakers),
                   "not_speech": {"known": int((~speech_known).sum()), "unseen": int((~speech_unseen).sum())}}
    record = {
        "threshold": threshold, "rule": rule,
        "method": (f"{rule}; measured on {len(unseen.speakers)} clips of {unseen_info['speakers']} unseen speakers "
                   f"({', '.join(unseen_info['sources'])}) and {len(known.speakers)} held-out clips of the "
                   f"{known_info['speakers']} known speakers: {measured['unseen_named']:.1%} of unseen clips named, "
                   f"{measured['known_correct']:.1%} of known clips named correctly"),
        "goals": {"max_unseen_named": max_unseen_named, "min_known_correct": min_known_correct},
        "measured": measured, "per_source": per_source_rates(trials, threshold, known, unseen),
        "trials": trials_info, "unseen": unseen_info, "known": known_info,
    }
    margins = torch.cat([trials.known_best[speech_known], trials.unseen_best[speech_unseen]]) - threshold
    labels = torch.cat([torch.ones(int(speech_known.sum()), dtype=torch.bool),
                        torch.zeros(int(speech_unseen.sum()), dtype=torch.bool)])
    return record, margins, labels


def can_make_galleries(unseen: Clips) -> bool:
    """Two or more unseen speakers of one source with a clip to enroll and one to test."""
    counts = defaultdict(int)
    for speaker in unseen.speakers:
        counts[speaker] += 1
    by_source = defaultdict(int)
    for speaker, n in counts.items():
        by_source[source_of(speaker)] += n >= 2
    return any(n >= 2 for n in by_source.values())


def calibrate(checkpoint: Checkpoint, known: Clips, unseen: Clips, scorer: Scorer,
              max_unseen_named: float = MAX_UNSEEN_NAMED, min_known_correct: float = MIN_KNOWN_CORRECT,
              dev: str = "", command: str = "", max_strangers_named: float = MAX_STRANGERS_NAMED,
              galleries: bool = True) -> dict:
    """The calibration record (info["calibration"]) for these known and unseen clips: identification calibrated
    with galleries of unseen speakers enrolled when they can make them (else with nobody enrolled), verification,
    probabilities and the Enroll tab's advice."""
    overlap = sorted(set(unseen.speakers) & set(checkpoint.speakers))
    if overlap:
        raise SystemExit(f"error: {len(overlap)} 'unseen' speakers are the model's own, e.g. {overlap[0]}")
    model = checkpoint.build_model()
    prototypes = F.normalize(model.head.weight.detach(), dim=-1)
    trials = open_set_trials(scorer, prototypes, checkpoint.speakers, known, unseen)
    enrollment = {}
    if galleries and can_make_galleries(unseen):
        identification, margins, labels, enrollment = gallery_identification(
            trials, prototypes, scorer, known, unseen, max_strangers_named, min_known_correct)
    else:
        identification, margins, labels = plain_identification(trials, known, unseen, max_unseen_named,
                                                               min_known_correct)
    speech_known, speech_unseen = known.speech, unseen.speech
    detection_scores = torch.cat([trials.known_own[speech_known], trials.unseen_best[speech_unseen]])
    detection_same = torch.cat([torch.ones(int(speech_known.sum()), dtype=torch.bool),
                                torch.zeros(int(speech_unseen.sum()), dtype=torch.bool)])
    identification["eer"], _ = equal_error_rate(detection_scores, detection_same)
    identification["min_dcf"], _ = min_dcf(detection_scores, detection_same)  # own prototype vs unseen best
    unseen_info = speakers_and_sources(unseen)
    pair_scores, pair_same = pair_trials(scorer, unseen)
    if pair_same.all() or not pair_same.any():
        raise SystemExit("error: clip-vs-clip trials need two or more unseen speakers, some with two or more clips")
    v_eer, v_threshold = equal_error_rate(pair_scores, pair_same)
    v_dcf, _ = min_dcf(pair_scores, pair_same)
    verification = {
        "threshold": v_threshold, "rule": "equal-error-rate point",
        "method": (f"equal-error-rate point of {len(pair_scores)} clip-vs-clip trials ({int(pair_same.sum())} "
                   f"same-speaker) among {unseen_info['speakers']} unseen speakers "
                   f"({', '.join(unseen_info['sources'])}); "
                   f"equal error rate there {v_eer:.1%}"),
        "eer": v_eer, "min_dcf": v_dcf,
        "trials": {"pairs": len(pair_scores), "same": int(pair_same.sum())}, "unseen": unseen_info,
    }
    slope = fit_slope(margins, labels)
    keep_known = speech_known
    temperature = fit_temperature(trials.known_scores[keep_known], trials.known_labels[keep_known])
    probability = {
        "slope": slope, "temperature": temperature,
        "method": (f"fitted on held-out trials: P(known) slope by class-balanced logistic regression on the best "
                   f"score's distance to its threshold of {int(labels.sum())} clips of speakers compared with and "
                   f"{int((~labels).sum())} of others; temperature by the known clips' log-likelihood"),
    }
    enrollment.update(gallery_calibration.disagreement_advice(scorer, unseen))
    score = {"kind": scorer.kind, "describe": scorer.describe()}
    if scorer.cohort is not None:
        score.update(top_k=scorer.top_k, cohort_size=len(scorer.cohort))
    return {"score": score, "identification": identification, "verification": verification,
            "probability": probability, "enrollment": enrollment, "dev": dev,
            "made": {"command": command,
                     "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}}


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--audio-dir", required=True, type=Path, help="unseen speakers' clips in speaker folders")
    parser.add_argument("--speakers", type=Path, help="list of unseen speaker folders (bench/dev_speakers.txt)")
    parser.add_argument("--split", help="only the speakers of this split of --speakers (e.g. calibration)")
    parser.add_argument("--include", action="append", default=[], metavar="GLOB", help="only these speaker folders")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="not these speaker folders")
    parser.add_argument("--max-clips", type=int, default=MAX_CLIPS, help="per unseen speaker (seeded choice)")
    parser.add_argument("--known-data", type=Path, help="prepared folder of the model's speakers (its test split)")
    parser.add_argument("--speech", type=Path, default=Path("../shared/speech"),
                        help="where the checkpoint's held-out clips are (without --known-data)")
    parser.add_argument("--cohort-dir", type=Path, help="build the cohort from these speakers' clips (mean embeddings)")
    parser.add_argument("--cohort-include", action="append", default=[], metavar="GLOB")
    parser.add_argument("--cohort-clips", type=int, default=3, help="clips per cohort speaker")
    parser.add_argument("--score", choices=["auto", "cosine", "as-norm"], default="auto",
                        help="auto: AS-norm when there is a cohort, else cosine")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="AS-norm cohort scores per side")
    parser.add_argument("--max-unseen-named", type=float, default=MAX_UNSEEN_NAMED)
    parser.add_argument("--min-known-correct", type=float, default=MIN_KNOWN_CORRECT)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--no-progress", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    progress, device = not args.no_progress, pick_device(args.device)
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")
    model = checkpoint.build_model()
    if getattr(model.head, "weight", None) is None:
        raise SystemExit("error: this model has no class prototypes (a margin head) to identify with")
    listed = read_speaker_list(args.speakers, args.split) if args.speakers else None
    rows = audio_clips(args.audio_dir, listed, args.include, args.exclude + list(checkpoint.speakers), args.max_clips)
    unseen = embed_clips(checkpoint, model, rows, args.audio_dir, device, progress, "unseen speakers")
    known = known_clips(checkpoint, model, args.known_data, args.speech, device, progress)
    if args.cohort_dir:
        everyone = set(read_speaker_list(args.speakers)) if args.speakers else set(unseen.speakers)
        leave_out = sorted(everyone | set(checkpoint.speakers))
        cohort_rows = [r for r in audio_clips(args.cohort_dir, None, args.cohort_include, [], args.cohort_clips)
                       if r[0] not in set(leave_out)]
        cohort_clips = embed_clips(checkpoint, model, cohort_rows, args.cohort_dir, device, progress, "cohort")
        checkpoint.cohort = cohort_from_clips(cohort_clips)
        checkpoint.info["cohort"] = {
            "speakers": len(checkpoint.cohort), "sources": speakers_and_sources(cohort_clips)["sources"],
            "made": f"mean embedding of up to {args.cohort_clips} clips of each speaker under {args.cohort_dir} "
                    f"({', '.join(args.cohort_include) or 'all'}), leaving out the development and known speakers"}
    use_cohort = args.score == "as-norm" or (args.score == "auto" and checkpoint.cohort is not None)
    if use_cohort and checkpoint.cohort is None:
        raise SystemExit("error: --score as-norm needs a cohort: the checkpoint has none; give --cohort-dir")
    scorer = Scorer(checkpoint.cohort if use_cohort else None, args.top_k)
    dev = (f"{args.speakers} split {args.split}" if args.speakers and args.split
           else str(args.speakers or args.audio_dir))
    checkpoint.info["calibration"] = calibrate(checkpoint, known, unseen, scorer, args.max_unseen_named,
                                               args.min_known_correct, dev,
                                               "python -m training.calibrate " + " ".join(map(shlex.quote, argv)))
    save_checkpoint(checkpoint, args.out)
    record = checkpoint.info["calibration"]
    print(json.dumps({k: record[k] for k in ("score", "identification", "verification", "probability")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
