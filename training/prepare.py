"""Turn a folder of audio clips into the course data layout.

    python -m training.prepare AUDIO_DIR OUT_DIR [--test-fraction F] [--seed S] [--workers N]

A clip's speaker is its parent folder relative to AUDIO_DIR: `root/spk/x.wav`
gives `spk`, `root/source/spk/x.flac` gives `source/spk`. Each clip becomes
`OUT_DIR/uttr-<md5 of its path>.pt`; a stratified fraction of each speaker's
clips goes to testdata.json, with the answers in test_labels.csv.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import json
import multiprocessing
import random
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from speaker_app.features import AUDIO_SUFFIXES, AudioError, FeatureConfig, features_from_file
from speaker_app.files import atomic_write


def find_clips(root: Path, include: list[str] = (), exclude: list[str] = ()) -> dict[str, list[str]]:
    """{speaker: [clip paths relative to root]} for clips at least one folder deep, sorted."""
    clips: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in AUDIO_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(root)
        speaker = relative.parent.as_posix()
        if speaker == ".":
            continue  # no speaker folder
        if include and not any(fnmatch.fnmatch(speaker, p) for p in include):
            continue
        if any(fnmatch.fnmatch(speaker, p) for p in exclude):
            continue
        clips.setdefault(speaker, []).append(relative.as_posix())
    return clips


def utterance_name(relative: str) -> str:
    return f"uttr-{hashlib.md5(relative.encode()).hexdigest()}.pt"


def split_test(clips: dict[str, list[str]], fraction: float, seed: int) -> set[str]:
    """About `fraction` of each speaker's clips (at least one when a speaker has two or more)."""
    rng = random.Random(seed)
    test = set()
    for speaker in sorted(clips):
        items = sorted(clips[speaker])
        rng.shuffle(items)
        n = min(len(items) - 1, max(1, round(fraction * len(items)))) if fraction > 0 else 0
        test.update(items[:n])
    return test


def _convert(job):
    root, out, relative, config = job
    torch.set_num_threads(1)
    try:
        features = features_from_file(root / relative, config)
    except AudioError as error:
        return relative, None, str(error)
    target = out / utterance_name(relative)
    atomic_write(target, lambda handle: torch.save(features.clone(), handle))
    return relative, len(features), None


def write_json(path: Path, data) -> None:
    atomic_write(path, lambda handle: handle.write((json.dumps(data, indent=1) + "\n").encode()))


def prepare(root: Path, out: Path, test_fraction: float = 0.1, seed: int = 0, workers: int | None = None,
            include: list[str] = (), exclude: list[str] = (), config: FeatureConfig = FeatureConfig(),
            progress: bool = True) -> dict:
    """Convert every clip; returns a summary with the skipped files and why."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise SystemExit(f"error: {root} is not a folder")
    clips = find_clips(root, include, exclude)
    if not clips:
        raise SystemExit(f"error: no audio clips ({', '.join(AUDIO_SUFFIXES)}) in speaker folders under {root}")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(root, out, relative, config) for speaker in sorted(clips) for relative in clips[speaker]]
    lengths, skipped = {}, {}
    workers = workers or min(8, multiprocessing.cpu_count())
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        results = pool.imap_unordered(_convert, jobs, chunksize=8)
        for relative, length, error in tqdm(results, total=len(jobs), desc="preparing", unit="clip",
                                            disable=not progress):
            if error:
                skipped[relative] = error
            else:
                lengths[relative] = length
    for speaker in list(clips):
        clips[speaker] = [c for c in clips[speaker] if c in lengths]
        if not clips[speaker]:
            del clips[speaker]
    if not clips:
        raise SystemExit(f"error: none of the {len(jobs)} clips could be used")

    test = split_test(clips, test_fraction, seed)
    speakers = sorted(clips)

    def entry(relative):
        return {"feature_path": utterance_name(relative), "mel_len": lengths[relative], "audio": relative}

    metadata = {"n_mels": config.n_mels,
                "speakers": {s: [entry(c) for c in clips[s] if c not in test] for s in speakers}}
    test_items = sorted(((entry(c), s) for s in speakers for c in clips[s] if c in test),
                        key=lambda item: item[0]["feature_path"])
    write_json(out / "mapping.json", {"speaker2id": {s: i for i, s in enumerate(speakers)},
                                      "id2speaker": {str(i): s for i, s in enumerate(speakers)}})
    write_json(out / "metadata.json", metadata)
    write_json(out / "testdata.json", {"n_mels": config.n_mels, "utterances": [e for e, _ in test_items]})
    write_json(out / "feature_config.json", config.to_dict())
    with open(out / "test_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Id", "Category"])
        writer.writerows([e["feature_path"], s] for e, s in test_items)
    return {"speakers": len(speakers), "clips": len(lengths), "train": len(lengths) - len(test),
            "test": len(test), "skipped": skipped}


class _Serial:
    """The Pool interface, in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, function, jobs, chunksize=1):
        return map(function, jobs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("audio_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--test-fraction", type=float, default=0.1, help="held-out share of each speaker's clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="parallel processes (default: CPU count, at most 8)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="only speakers matching this glob, e.g. 'vcc2016/*' (repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="leave out speakers matching this glob (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not 0 <= args.test_fraction < 1:
        parser.error("--test-fraction must be in [0, 1)")
    summary = prepare(args.audio_dir, args.out_dir, args.test_fraction, args.seed, args.workers,
                      args.include, args.exclude, progress=not args.quiet)
    for relative, reason in sorted(summary["skipped"].items()):
        print(f"skipped {relative}: {reason}", file=sys.stderr)
    print(f"{summary['clips']} clips of {summary['speakers']} speakers -> {args.out_dir} "
          f"({summary['train']} train, {summary['test']} test, {len(summary['skipped'])} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
