"""Turn folders of audio clips into the course data layout.

    python -m training.prepare AUDIO_DIR [AUDIO_DIR ...] OUT_DIR [--test-fraction F | --test-list FILE]
                               [--include GLOB] [--include-from FILE] [--exclude GLOB] [--exclude-from FILE]
                               [--speed 0.9,1.1]
                               [--seed S] [--workers N]

A clip's speaker is its parent folder relative to its AUDIO_DIR: `root/spk/x.wav`
gives `spk`, `root/source/spk/x.flac` gives `source/spk`; several AUDIO_DIRs are
read as one (a speaker folder must not appear in two). Each clip becomes
`OUT_DIR/uttr-<md5 of its path>.pt`. A stratified fraction of each speaker's
clips goes to testdata.json, with the answers in test_labels.csv, or exactly
the clips a --test-list file names (one path per line, relative to its AUDIO_DIR).

`--speed 0.9,1.1` adds each training clip again at those speeds (tempo and pitch
together, as sox `speed`) as new speakers `SPEAKER@0.9` and `SPEAKER@1.1`: more
distinct voices for the embedding (the Kaldi and WeSpeaker recipes do the same).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import json
import multiprocessing
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from speaker_app.features import AUDIO_SUFFIXES, AudioError, FeatureConfig, features_from_file, features_from_wave, \
    read_audio, speed_perturb
from speaker_app.files import atomic_write

from .data import stratified_split


def find_clips(root: Path, include: list[str] = (), exclude: list[str] = ()) -> dict[str, list[str]]:
    """{speaker: [clip paths relative to root]} for clips at least one folder deep, sorted.
    Symbolic links to folders are followed."""
    clips: dict[str, list[str]] = {}
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders.sort()
        speaker = Path(folder).relative_to(root).as_posix()
        if speaker == "." or (include and not any(fnmatch.fnmatch(speaker, p) for p in include)) \
                or any(fnmatch.fnmatch(speaker, p) for p in exclude):
            continue  # no speaker folder, or not wanted
        found = sorted(f"{speaker}/{name}" for name in files if Path(name).suffix.lower() in AUDIO_SUFFIXES)
        if found:
            clips[speaker] = found
    return dict(sorted(clips.items()))


def read_list(path: Path) -> list[str]:
    """The last field of each line of a list file; blank lines and # comments skipped."""
    return [line.split()[-1] for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]


def utterance_name(relative: str, speed: float = 1.0) -> str:
    key = relative if speed == 1.0 else f"{relative}@{speed:g}"
    return f"uttr-{hashlib.md5(key.encode()).hexdigest()}.pt"


def perturbed_speaker(speaker: str, speed: float) -> str:
    return speaker if speed == 1.0 else f"{speaker}@{speed:g}"


def split_test(clips: dict[str, list[str]], fraction: float, seed: int) -> set[str]:
    """About `fraction` of each speaker's clips (at least one when a speaker has two or more)."""
    return set(stratified_split({s: sorted(c) for s, c in clips.items()}, fraction, seed)[1])


def _convert(job):
    root, out, relative, config, speed = job
    torch.set_num_threads(1)
    try:
        if speed == 1.0:
            features = features_from_file(root / relative, config)
        else:
            wave = speed_perturb(read_audio(root / relative, config.sample_rate), speed, config.sample_rate)
            features = features_from_wave(wave, config, Path(relative).name)
    except AudioError as error:
        return relative, speed, None, str(error)
    atomic_write(out / utterance_name(relative, speed), lambda handle: torch.save(features.clone(), handle))
    return relative, speed, len(features), None


def write_json(path: Path, data) -> None:
    atomic_write(path, lambda handle: handle.write((json.dumps(data, indent=1) + "\n").encode()))


def gather(roots: list[Path], include, exclude) -> tuple[dict[str, list[str]], dict[str, Path]]:
    """Clips of every root, and the root of each speaker; a speaker in two roots is an error."""
    clips, root_of = {}, {}
    for root in roots:
        if not root.is_dir():
            raise SystemExit(f"error: {root} is not a folder")
        for speaker, found in find_clips(root, include, exclude).items():
            if speaker in clips:
                raise SystemExit(f"error: speaker folder {speaker!r} is in both {root_of[speaker]} and {root}")
            clips[speaker], root_of[speaker] = found, root
    return dict(sorted(clips.items())), root_of


def convert_all(jobs: list, workers: int, progress: bool):
    """Run every (root, out, relative, config, speed) job -> {(relative, speed): frames}, {relative: error}."""
    lengths, skipped = {}, {}
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        results = pool.imap_unordered(_convert, jobs, chunksize=8)
        for relative, speed, length, error in tqdm(results, total=len(jobs), desc="preparing", unit="clip",
                                                   disable=not progress):
            if error:
                skipped[relative if speed == 1.0 else f"{relative}@{speed:g}"] = error
            else:
                lengths[relative, speed] = length
    return lengths, skipped


def prepare(roots, out: Path, test_fraction: float = 0.1, seed: int = 0, workers: int | None = None,
            include: list[str] = (), exclude: list[str] = (), config: FeatureConfig = FeatureConfig(),
            progress: bool = True, test_list: list[str] | None = None, speeds: list[float] = ()) -> dict:
    """Convert every clip; returns a summary with the skipped files and why."""
    roots = [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]
    out = Path(out)
    clips, root_of = gather(roots, include, exclude)
    if not clips:
        raise SystemExit(f"error: no audio clips ({', '.join(AUDIO_SUFFIXES)}) in speaker folders under "
                         + ", ".join(map(str, roots)))
    if test_list is not None:
        known = {c for found in clips.values() for c in found}
        test = set(test_list) & known
        if len(test) < len(set(test_list)):
            print(f"warning: {len(set(test_list)) - len(test)} clips of the test list are not among the clips found",
                  file=sys.stderr)
    else:
        test = split_test(clips, test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(root_of[s], out, c, config, 1.0) for s in clips for c in clips[s]]
    jobs += [(root_of[s], out, c, config, speed) for speed in speeds for s in clips for c in clips[s] if c not in test]
    lengths, skipped = convert_all(jobs, workers or min(8, multiprocessing.cpu_count()), progress)
    if not lengths:
        raise SystemExit(f"error: none of the {len(jobs)} clips could be used")

    def entry(relative, speed=1.0):
        return {"feature_path": utterance_name(relative, speed), "mel_len": lengths[relative, speed], "audio": relative}

    train = {}
    for speed in (1.0, *speeds):
        for s in clips:
            kept = [entry(c, speed) for c in clips[s] if c not in test and (c, speed) in lengths]
            if kept:
                train[perturbed_speaker(s, speed)] = kept
    test_items = sorted(((entry(c), s) for s in clips for c in clips[s] if c in test and (c, 1.0) in lengths),
                        key=lambda item: item[0]["feature_path"])
    speakers = sorted(set(train) | {s for _, s in test_items})
    write_json(out / "mapping.json", {"speaker2id": {s: i for i, s in enumerate(speakers)},
                                      "id2speaker": {str(i): s for i, s in enumerate(speakers)}})
    write_json(out / "metadata.json", {"n_mels": config.n_mels, "speakers": {s: train.get(s, []) for s in speakers}})
    write_json(out / "testdata.json", {"n_mels": config.n_mels, "utterances": [e for e, _ in test_items]})
    write_json(out / "feature_config.json", config.to_dict())
    with open(out / "test_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Id", "Category"])
        writer.writerows([e["feature_path"], s] for e, s in test_items)
    n_train = sum(len(items) for items in train.values())
    return {"speakers": len(speakers), "clips": n_train + len(test_items), "train": n_train,
            "test": len(test_items), "skipped": skipped}


class _Serial:
    """The Pool interface, in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, function, jobs, chunksize=1):
        return map(function, jobs)


def link_view(source: Path, target: Path, keep, clips: set[str] | None = None) -> Path:
    """A course-layout folder of links to `source`'s features with the speakers for which
    `keep(speaker, n_clips)` holds (only their `clips`, feature paths, when given); the held-out
    test clips all stay, with their speakers. Made once."""
    if (target / "test_labels.csv").exists():
        return target
    metadata = json.loads((source / "metadata.json").read_text())
    test = json.loads((source / "testdata.json").read_text())
    tested = {line.split(",")[1] for line in (source / "test_labels.csv").read_text().splitlines()[1:]}
    kept = sorted(s for s, items in metadata["speakers"].items() if keep(s, len(items)) or s in tested)
    speakers = {s: [u for u in metadata["speakers"][s] if clips is None or u["feature_path"] in clips] for s in kept}
    target.mkdir(parents=True, exist_ok=True)
    for item in [u for s in kept for u in speakers[s]] + test["utterances"]:
        link = target / item["feature_path"]
        if not link.exists():
            os.symlink(source.resolve() / item["feature_path"], link)
    (target / "mapping.json").write_text(json.dumps({"speaker2id": {s: i for i, s in enumerate(kept)},
                                                      "id2speaker": {str(i): s for i, s in enumerate(kept)}}))
    (target / "metadata.json").write_text(json.dumps({**metadata, "speakers": speakers}))
    for name in ("testdata.json", "feature_config.json", "test_labels.csv"):
        (target / name).write_text((source / name).read_text())
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="AUDIO_DIR ... OUT_DIR")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--test-fraction", type=float, default=0.1, help="held-out share of each speaker's clips")
    split.add_argument("--test-list", type=Path, help="hold out exactly the clips this file lists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="parallel processes (default: CPU count, at most 8)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="only speakers matching this glob, e.g. 'vcc2016/*' (repeatable)")
    parser.add_argument("--include-from", type=Path, action="append", default=[], metavar="FILE",
                        help="only the speakers this file lists (the last field of each line)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="leave out speakers matching this glob (repeatable)")
    parser.add_argument("--exclude-from", type=Path, action="append", default=[], metavar="FILE",
                        help="leave out the speakers this file lists (the last field of each line)")
    parser.add_argument("--speed", help="also train on the clips at these speeds, as new speakers, e.g. 0.9,1.1")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if len(args.paths) < 2:
        parser.error("give at least one AUDIO_DIR and the OUT_DIR")
    if not 0 <= args.test_fraction < 1:
        parser.error("--test-fraction must be in [0, 1)")
    try:
        speeds = [float(v) for v in args.speed.split(",")] if args.speed else []
    except ValueError:
        parser.error(f"--speed takes numbers separated by commas, got {args.speed!r}")
    if any(not 0.5 <= v <= 2 or v == 1 for v in speeds):
        parser.error("--speed factors must lie in [0.5, 2] and differ from 1")
    *roots, out = args.paths
    include = args.include + [name for path in args.include_from for name in read_list(path)]
    exclude = args.exclude + [name for path in args.exclude_from for name in read_list(path)]
    summary = prepare(roots, out, args.test_fraction, args.seed, args.workers, include, exclude,
                      progress=not args.quiet, test_list=read_list(args.test_list) if args.test_list else None,
                      speeds=speeds)
    for relative, reason in sorted(summary["skipped"].items()):
        print(f"skipped {relative}: {reason}", file=sys.stderr)
    print(f"{summary['clips']} clips of {summary['speakers']} speakers -> {out} "
          f"({summary['train']} train, {summary['test']} test, {len(summary['skipped'])} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
