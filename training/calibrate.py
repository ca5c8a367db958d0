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
import random
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from speaker_app.features import AudioError, features_from_file
from speaker_app.inference import infer
from speaker_app.scoring import DEFAULT_TOP_K, Scorer, centroid, equal_error_rate, min_dcf
from speaker_app.speech import check_speech

from .data import DataError, load_features, read_speakers, read_test
from .prepare import find_clips

MAX_UNSEEN_NAMED, MIN_KNOWN_CORRECT = 0.10, 0.95  # issue 15's goals
MAX_CLIPS = 20  # per unseen speaker: many speakers matter more than many clips of one
MAX_PAIR_CLIPS = 4000  # clip-vs-clip trials grow with the square


# -- data ----------------------------------------------------------------------------------------
class Clips(NamedTuple):
    """Labelled clips and what the model makes of them."""
    speakers: list[str]  # (N,) speaker of each clip
    keys: list[str]  # (N,) path of each clip
    embeddings: torch.Tensor  # (N, E) unit embeddings
    speech: torch.Tensor  # (N,) bool: passed the speech check


def source_of(speaker: str) -> str:
    return speaker.split("/")[0] if "/" in speaker else ""


def read_speaker_list(path: Path, split: str | None = None) -> list[str]:
    """Speaker folders from a list file: `SPEAKER` or `SPLIT SPEAKER` lines (bench/dev_speakers.txt);
    with `split`, only that split's speakers."""
    speakers = []
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if not fields or line.startswith("#"):
            continue
        if split is None or (len(fields) == 2 and fields[0] == split):
            speakers.append(fields[-1])
    if not speakers:
        raise SystemExit(f"error: {path} lists no speakers" + (f" in split {split!r}" if split else ""))
    return speakers


def audio_clips(root: Path, speakers: list[str] | None = None, include=(), exclude=(), max_clips: int | None = None,
                seed: int = 0) -> list[tuple[str, str]]:
    """[(speaker, clip path relative to root)] of the chosen speaker folders, at most max_clips each (seeded)."""
    include = list(include) + list(speakers or [])
    found = find_clips(root, include, exclude)
    if speakers:
        missing = sorted(set(speakers) - set(found))
        if missing:
            print(f"warning: {len(missing)} listed speakers have no clips under {root}, e.g. {missing[0]}",
                  file=sys.stderr)
    rows = []
    for speaker, clips in found.items():
        if max_clips and len(clips) > max_clips:
            clips = sorted(random.Random(f"{seed}/{speaker}").sample(clips, max_clips))
        rows += [(speaker, clip) for clip in clips]
    return rows


def embed_clips(checkpoint: Checkpoint, model, rows: list[tuple[str, str]], root: Path, device="cpu",
                progress: bool = True, what: str = "clips") -> Clips:
    """Features, speech check and embeddings of audio clips [(speaker, path under root)]; undecodable ones skipped."""
    kept, features = [], []
    for speaker, clip in tqdm(rows, desc=f"features of {what}", unit="clip", disable=not progress, leave=False):
        try:
            features.append(features_from_file(root / clip, checkpoint.feature_config))
        except AudioError as error:
            print(f"skipped {clip}: {error}", file=sys.stderr)
            continue
        kept.append((speaker, clip))
    return _embed(model, kept, features, device)


def _embed(model, rows, features, device) -> Clips:
    if not rows:
        raise SystemExit("error: no usable clips")
    speech = torch.tensor([check_speech(f).speech for f in features])
    embeddings = infer(model.to(device), features, device=device).embeddings
    return Clips([s for s, _ in rows], [k for _, k in rows], embeddings, speech)


def known_clips(checkpoint: Checkpoint, model, known_data: Path | None, speech_dir: Path, device="cpu",
                progress: bool = True) -> Clips:
    """Held-out clips of the model's own speakers: --known-data's labelled test split, else the
    checkpoint's recorded held-out clips (paths relative to the speech folder)."""
    if known_data is not None:
        try:
            speakers = read_speakers(known_data)
            items = [u for u in read_test(known_data, speakers) if u.speaker >= 0]
            features = [load_features(known_data / u.path, checkpoint.feature_config.n_mels) for u in items]
        except DataError as error:
            raise SystemExit(f"error: {error}")
        rows = [(speakers[u.speaker], u.path) for u in items]
        return _embed(model, rows, features, device)
    held_out = checkpoint.info.get("training_data", {}).get("held_out_clips")
    if not held_out:
        raise SystemExit("error: the checkpoint records no held-out clips; give --known-data PREPARED_DIR")
    rows = [(clip.rsplit("/", 1)[0], clip) for clip in held_out]
    return embed_clips(checkpoint, model, rows, speech_dir, device, progress, "known held-out clips")


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


def calibrate(checkpoint: Checkpoint, known: Clips, unseen: Clips, scorer: Scorer,
              max_unseen_named: float = MAX_UNSEEN_NAMED, min_known_correct: float = MIN_KNOWN_CORRECT,
              dev: str = "", command: str = "") -> dict:
    """The calibration record (info["calibration"]) for these known and unseen clips."""
    overlap = sorted(set(unseen.speakers) & set(checkpoint.speakers))
    if overlap:
        raise SystemExit(f"error: {len(overlap)} 'unseen' speakers are the model's own, e.g. {overlap[0]}")
    model = checkpoint.build_model()
    prototypes = F.normalize(model.head.weight.detach(), dim=-1)
    trials = open_set_trials(scorer, prototypes, checkpoint.speakers, known, unseen)
    threshold, rule = choose_identification_threshold(trials, max_unseen_named, min_known_correct)
    measured = open_set_rates(trials, threshold)
    speech_known, speech_unseen = known.speech, unseen.speech
    detection_scores = torch.cat([trials.known_own[speech_known], trials.unseen_best[speech_unseen]])
    detection_same = torch.cat([torch.ones(int(speech_known.sum()), dtype=torch.bool),
                                torch.zeros(int(speech_unseen.sum()), dtype=torch.bool)])
    id_eer, _ = equal_error_rate(detection_scores, detection_same)
    id_dcf, _ = min_dcf(detection_scores, detection_same)
    unseen_info, known_info = speakers_and_sources(unseen), speakers_and_sources(known)
    trials_info = {"known_clips": len(known.speakers), "unseen_clips": len(unseen.speakers),
                   "not_speech": {"known": int((~speech_known).sum()), "unseen": int((~speech_unseen).sum())}}
    identification = {
        "threshold": threshold, "rule": rule,
        "method": (f"{rule}; measured on {len(unseen.speakers)} clips of {unseen_info['speakers']} unseen speakers "
                   f"({', '.join(unseen_info['sources'])}) and {len(known.speakers)} held-out clips of the "
                   f"{known_info['speakers']} known speakers: {measured['unseen_named']:.1%} of unseen clips named, "
                   f"{measured['known_correct']:.1%} of known clips named correctly"),
        "goals": {"max_unseen_named": max_unseen_named, "min_known_correct": min_known_correct},
        "measured": measured, "per_source": per_source_rates(trials, threshold, known, unseen),
        "trials": trials_info, "unseen": unseen_info, "known": known_info,
        "eer": id_eer, "min_dcf": id_dcf,  # own-prototype score of known clips vs best score of unseen clips
    }
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
    keep_known, keep_unseen = speech_known, speech_unseen
    margins = torch.cat([trials.known_best[keep_known], trials.unseen_best[keep_unseen]]) - threshold
    labels = torch.cat([torch.ones(int(keep_known.sum()), dtype=torch.bool),
                        torch.zeros(int(keep_unseen.sum()), dtype=torch.bool)])
    slope = fit_slope(margins, labels)
    temperature = fit_temperature(trials.known_scores[keep_known], trials.known_labels[keep_known])
    probability = {
        "slope": slope, "temperature": temperature,
        "method": (f"fitted on held-out trials: P(known) slope by class-balanced logistic regression on the best "
                   f"scores of {int(keep_known.sum())} known and {int(keep_unseen.sum())} unseen clips, centred at "
                   f"the identification threshold; temperature by the known clips' log-likelihood"),
    }
    score = {"kind": scorer.kind, "describe": scorer.describe()}
    if scorer.cohort is not None:
        score.update(top_k=scorer.top_k, cohort_size=len(scorer.cohort))
    return {"score": score, "identification": identification, "verification": verification,
            "probability": probability, "dev": dev,
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
