"""Accuracy of a checkpoint on labelled data, and enrollment of new speakers.

    python -m training.evaluate --checkpoint CKPT (--data DIR | --audio-dir DIR) [--enroll N] [--json]

--data: the course layout's labelled held-out split: testdata.json with
test_labels.csv when prepare made the folder, else the validation split the
checkpoint was trained with. --audio-dir: a folder of clips in speaker folders,
as for prepare. Accuracy counts the clips of speakers the model knows, overall
and per source (the first part of `source/speaker` names).

--enroll N treats the speakers as new: each is enrolled from its first N clips
(sorted by name), the rest are identified among the enrolled speakers by cosine
similarity, and the equal error rate and minDCF (p_target 0.01) are measured over
all clip-vs-speaker trials. When the checkpoint's decisions use AS-norm, the same
is measured again with the app's scores (`as_norm` in the JSON): AS-norm against
its cohort and the other enrolled speakers' clips.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from speaker_app.checkpoint import CheckpointError, load_checkpoint
from speaker_app.features import AudioError, features_from_file
from speaker_app.inference import infer
from speaker_app.scoring import Scorer, centroid, cosine, equal_error_rate, min_dcf

from speaker_app.configs import from_dict
from speaker_app.decisions import Decisions

from .config import TrainConfig
from .data import DataError, load_features, read_labelled, read_speakers, read_test, source_of, split_utterances
from .prepare import find_clips, read_list


def labelled_from_data(root: Path, checkpoint, progress: bool, split: str = "auto"):
    """[(speaker name, key, features)] of the data folder's labelled held-out split."""
    speakers = read_speakers(root)
    test = [u for u in read_test(root, speakers) if u.speaker >= 0] if split != "valid" else []
    if split == "test" and not test:
        raise SystemExit(f"error: {root} has no test labels (test_labels.csv)")
    if test:
        split, items = "test", test
    else:
        config = from_dict(TrainConfig, checkpoint.info.get("train_config", {}))
        items = split_utterances(read_labelled(root, speakers), config.valid_fraction, config.seed)[1]
        split = "valid"
    n_mels = checkpoint.feature_config.n_mels
    rows = [(speakers[u.speaker], u.path, load_features(root / u.path, n_mels))
            for u in tqdm(items, desc=f"loading {split}", unit="utt", disable=not progress, leave=False)]
    return split, rows


def labelled_from_audio(root: Path, checkpoint, include, exclude, progress: bool):
    """[(speaker name, clip path, features)] for every decodable clip in speaker folders."""
    clips = find_clips(root, include, exclude)
    if not clips:
        raise SystemExit(f"error: no audio clips in speaker folders under {root}")
    rows, skipped = [], 0
    jobs = [(speaker, clip) for speaker in sorted(clips) for clip in clips[speaker]]
    for speaker, clip in tqdm(jobs, desc="features", unit="clip", disable=not progress, leave=False):
        try:
            rows.append((speaker, clip, features_from_file(root / clip, checkpoint.feature_config)))
        except AudioError as error:
            skipped += 1
            print(f"skipped {clip}: {error}", file=sys.stderr)
    return "audio", rows


def accuracy(names: list[str], logits: torch.Tensor, speakers: list[str]) -> dict:
    """Top-1/top-5 over clips of known speakers, overall and per source."""
    index = {name: i for i, name in enumerate(speakers)}
    known = [i for i, name in enumerate(names) if name in index]
    result = {"top1": None, "top5": None, "n": len(known), "n_unknown_speaker": len(names) - len(known)}
    if not known:
        return result
    labels = torch.tensor([index[names[i]] for i in known])
    top = logits[known].topk(min(5, logits.shape[1]), dim=-1).indices
    hit1 = (top[:, 0] == labels).tolist()
    hit5 = (top == labels[:, None]).any(-1).tolist()
    result["top1"], result["top5"] = sum(hit1) / len(known), sum(hit5) / len(known)
    per_source = defaultdict(lambda: [0, 0, 0])
    for i, h1, h5 in zip(known, hit1, hit5):
        counts = per_source[source_of(names[i])]
        counts[0] += h1
        counts[1] += h5
        counts[2] += 1
    if len(per_source) > 1 or "" not in per_source:
        result["per_source"] = {s: {"top1": c[0] / c[2], "top5": c[1] / c[2], "n": c[2]}
                                for s, c in sorted(per_source.items())}
    return result


def pair_verification(names: list[str], embeddings: torch.Tensor, max_clips: int = 4000) -> dict:
    """EER over all clip-vs-clip trials (each unordered pair once), as the app's verify tab scores them."""
    keep = torch.randperm(len(names), generator=torch.Generator().manual_seed(0))[:max_clips].sort().values
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    labels = torch.tensor([index[names[i]] for i in keep.tolist()])
    scores = cosine(embeddings[keep], embeddings[keep])
    upper = torch.triu(torch.ones_like(scores, dtype=torch.bool), diagonal=1)
    same = (labels[:, None] == labels[None, :])[upper]
    if same.all() or not same.any():
        return {}
    eer, threshold = equal_error_rate(scores[upper], same)
    dcf, _ = min_dcf(scores[upper], same)
    return {"pair_eer": eer, "pair_threshold": threshold, "pair_min_dcf": dcf, "pair_trials": int(upper.sum())}


def enrollment_trials(names: list[str], keys: list[str], embeddings: torch.Tensor, n_enroll: int,
                      scorer: Scorer | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Enroll each speaker with more than n_enroll clips from its first n_enroll (by key); score each
    of the rest against every enrolled speaker: (scores (N, S), the true speaker's column (N,), the S
    enrolled names). Scores are cosine similarities, or the scorer's as the app makes them: AS-norm
    against the cohort and the other enrolled speakers' clips (`Scorer.score_speakers`)."""
    by_speaker = defaultdict(list)
    for i in sorted(range(len(names)), key=lambda i: (names[i], keys[i])):
        by_speaker[names[i]].append(i)
    usable = {s: rows for s, rows in by_speaker.items() if len(rows) > n_enroll}
    if len(usable) < 2:
        raise SystemExit(f"error: --enroll {n_enroll} needs at least two speakers with more than {n_enroll} clips")
    enrolled = sorted(usable)
    clips = embeddings[[i for s in enrolled for i in usable[s][:n_enroll]]]  # (S * n_enroll, E)
    centroids = torch.stack([centroid(rows) for rows in clips.split(n_enroll)])
    owners = torch.arange(len(enrolled)).repeat_interleave(n_enroll)
    tests = [(enrolled.index(s), i) for s in enrolled for i in usable[s][n_enroll:]]
    labels = torch.tensor([label for label, _ in tests])
    tested = embeddings[[i for _, i in tests]]
    scores = scorer.score_speakers(tested, centroids, clips, owners) if scorer else cosine(tested, centroids)  # (N, S)
    return scores, labels, enrolled


def enrollment(names: list[str], keys: list[str], embeddings: torch.Tensor, n_enroll: int,
               scorer: Scorer | None = None) -> dict:
    """Enroll each speaker from its first n_enroll clips; identify and verify the rest (`enrollment_trials`)."""
    scores, labels, enrolled = enrollment_trials(names, keys, embeddings, n_enroll, scorer)
    same = (labels[:, None] == torch.arange(len(enrolled))).flatten()
    eer, threshold = equal_error_rate(scores.flatten(), same)
    dcf, dcf_threshold = min_dcf(scores.flatten(), same)
    return {"enroll_top1": (scores.argmax(-1) == labels).float().mean().item(), "eer": eer,
            "eer_threshold": threshold, "min_dcf": dcf, "min_dcf_threshold": dcf_threshold,
            "enroll_speakers": len(enrolled), "enroll_clips": n_enroll,
            "enroll_test_clips": len(labels)}


def evaluate(checkpoint_path: Path, data: Path | None = None, audio_dir: Path | None = None,
             enroll: int | None = None, include=(), exclude=(), progress: bool = True, split: str = "auto") -> dict:
    try:
        checkpoint = load_checkpoint(checkpoint_path)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}")
    model = checkpoint.build_model()
    try:
        split, rows = (labelled_from_data(data, checkpoint, progress, split) if data
                       else labelled_from_audio(audio_dir, checkpoint, include, exclude, progress))
    except DataError as error:
        raise SystemExit(f"error: {error}")
    if not rows:
        raise SystemExit("error: no labelled utterances to evaluate")
    names, keys, features = zip(*rows)
    outputs = infer(model, list(features))
    result = {"checkpoint": str(checkpoint_path), "split": split, **accuracy(list(names), outputs.logits, checkpoint.speakers),
              **pair_verification(list(names), outputs.embeddings)}
    if enroll:
        result.update(enrollment(list(names), list(keys), outputs.embeddings, enroll))
        scorer = app_scorer(checkpoint)
        if scorer.kind == "as-norm":
            result["as_norm"] = {"score": scorer.describe(),
                                 **enrollment(list(names), list(keys), outputs.embeddings, enroll, scorer)}
    elif result["n"] == 0:
        raise SystemExit("error: none of these speakers is known to the model; use --enroll N to enroll them")
    return result


def app_scorer(checkpoint) -> Scorer:
    """The scorer the app decides with (speaker_app.recognizer)."""
    try:
        decisions = Decisions.from_calibration(checkpoint.info.get("calibration"), checkpoint.cohort is not None)
    except ValueError as error:
        raise SystemExit(f"error: the checkpoint's calibration is unusable: {error}")
    return decisions.scorer(checkpoint.cohort)


def report(result: dict) -> str:
    lines = [f"{result['split']} split of {result['checkpoint']}"]
    if result["n"]:
        lines.append(f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  on {result['n']} utterances")
        for source, r in result.get("per_source", {}).items():
            lines.append(f"  {source or '-':<12} top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  n={r['n']}")
    if result["n_unknown_speaker"]:
        lines.append(f"{result['n_unknown_speaker']} utterances of speakers the model does not know")
    if "pair_eer" in result:
        lines.append(f"clip-vs-clip verification: EER {result['pair_eer']:.4f} at cosine {result['pair_threshold']:.3f}, "
                     f"minDCF(0.01) {result['pair_min_dcf']:.4f} over {result['pair_trials']} trials")
    if "eer" in result:
        lines.append(f"enrolled {result['enroll_speakers']} speakers from {result['enroll_clips']} clips each: "
                     f"identification {result['enroll_top1']:.4f} on {result['enroll_test_clips']} clips, "
                     f"EER {result['eer']:.4f} at cosine {result['eer_threshold']:.3f}, minDCF(0.01) {result['min_dcf']:.4f}")
    if "as_norm" in result:
        scored = result["as_norm"]
        lines.append(f"  scored as the app does ({scored['score']}): identification {scored['enroll_top1']:.4f}, "
                     f"EER {scored['eer']:.4f}, minDCF(0.01) {scored['min_dcf']:.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", type=Path, help="course-layout data folder")
    where.add_argument("--audio-dir", type=Path, help="folder of clips in speaker folders")
    parser.add_argument("--enroll", type=int, metavar="N", help="treat speakers as new: enroll each from N clips")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN", help="only these speakers (glob)")
    parser.add_argument("--include-from", type=Path, action="append", default=[], metavar="FILE",
                        help="only the speakers this file lists (the last field of each line)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="not these speakers (glob)")
    parser.add_argument("--split", choices=["auto", "test", "valid"], default="auto",
                        help="with --data: test (needs test_labels.csv), valid (the checkpoint's validation split); "
                             "auto: test when labelled, else valid")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    if args.enroll is not None and args.enroll < 1:
        parser.error("--enroll must be at least 1")
    include = args.include + [name for path in args.include_from for name in read_list(path)]
    result = evaluate(args.checkpoint, args.data, args.audio_dir, args.enroll, include, args.exclude,
                      progress=not args.json, split=args.split)
    print(report(result))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
