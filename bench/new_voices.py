"""New voices: enroll-5 identification and open-set decisions on unseen speakers, ours beside peers.

    python -m bench.new_voices --checkpoint CKPT --audio-dir CORPUS [--model NAME=CKPT ...] [--no-resemblyzer]
        [--speakers bench/dev_speakers.txt] [--split test] [--speech ../shared/speech] [--max-clips 40]
        [--cache runs/new-voices-cache] [--quick]

CORPUS is the many-speaker corpus (../shared/corpora/build.sh), `SOURCE/SPEAKER/clips`;
the speakers are the `--split` half of `--speakers` (bench/dev_speakers.txt: the
development speakers no model of ours trains on; thresholds are fitted on the other
half, `calibration`), at most --max-clips clips each (seeded choice).

The protocol is training.new_voices's: enroll-5 per source and over all sources, and the open
set at the checkpoint's shipped decisions. Models: ours (--checkpoint: cosine, and AS-norm
when it carries a cohort), each `--model NAME=CKPT` (any checkpoint of this project, such as
the course baseline) and Resemblyzer (pretrained GE2E, its weights in its wheel; bench-only,
never used to train ours). The known speakers' held-out clips are read under --speech.
With Resemblyzer, ours and it are also compared clip by clip on all sources (top-1 difference
with a 95 % interval over speakers, `training.new_voices.paired_top1`).

Writes the `new_voices` section of bench/RESULTS.md (not with --quick).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from speaker_app.checkpoint import Checkpoint, load_checkpoint
from speaker_app.recognizer import Recognizer
from training.data import source_of
from training.dev_clips import audio_clips, read_speaker_list
from training.new_voices import ENROLL, Clip, enroll_by_source, measure, paired_top1, resemblyzer_embeddings

from . import common

MAX_CLIPS = 40
PEER = "Resemblyzer (pretrained GE2E)"


# -- the report ----------------------------------------------------------------------------------
def percent(value) -> str:
    return f"{100 * value:.1f}%"


def enroll_rows(name: str, results: dict[str, dict]) -> list[list]:
    return [[name, group, r["enroll_speakers"], r["enroll_test_clips"], percent(r["enroll_top1"]), percent(r["eer"]),
             f"{r['min_dcf']:.3f}"] for group, r in results.items()]


def rate_cells(rates: dict, groups: list[str]) -> list[str]:
    return [f"{percent(rates[g][0])} of {rates[g][1]}" if g in rates else "-" for g in groups]


def paired_line(paired: dict, ours: str) -> str:
    low, high = paired["interval"]
    return (f"\n{ours} against {PEER}, paired on the same {paired['clips']} test clips of {paired['speakers']} "
            f"speakers (all sources): top-1 difference {100 * paired['difference']:+.1f} points, 95% interval "
            f"{100 * low:+.1f} to {100 * high:+.1f} ({paired['draws']} draws of the speakers with replacement); "
            f"{paired['ours_only']} clips only ours names right, {paired['peer_only']} only {PEER.split(' (')[0]}.")


def report(args, tables: dict, paired: dict | None, open_result: dict, checkpoint: Checkpoint, counts: dict,
           wall_s: float) -> str:
    lines = [common.header("New voices: unseen speakers, enroll-5 and open set", wall_s)]
    speakers = args.speakers.resolve()
    shown = speakers.relative_to(common.REPO) if speakers.is_relative_to(common.REPO) else speakers
    fitted = ("Thresholds were fitted on this half: its open-set rates are not a test of them."
              if args.split == "calibration" else "Thresholds were fitted on the other half.")
    lines.append(f"Speakers: the `{args.split}` half of `{shown}` under the many-speaker corpus "
                 f"({counts['speakers']} speakers, {counts['clips']} clips, at most {args.max_clips} per speaker; "
                 f"undecodable clips left out: {counts['skipped']}). {fitted} "
                 f"Known speakers' held-out clips: {counts['known']} under `{args.speech}`.\n")
    lines.append(f"### Enroll-{ENROLL}: identify among the enrolled, clip-vs-speaker EER and minDCF (p_target 0.01)\n")
    columns = ["model", "source", "enrolled speakers", "test clips", "top-1", "EER", "minDCF"]
    rows = [row for name, results in tables.items() for row in enroll_rows(name, results)]
    lines.append(common.table(columns, [row for row in rows if row[1] == "all"]))
    if paired:
        lines.append(paired_line(paired, "ours (AS-norm)" if "ours (AS-norm)" in tables else "ours (cosine)"))
    lines += [common.MORE, f"### Enroll-{ENROLL} by source\n", common.table(columns, [row for row in rows if row[1] != "all"])]
    calibration = checkpoint.info.get("calibration", {})
    recognizer = Recognizer(checkpoint)
    decisions = recognizer.decisions
    lines.append(f"\n### Open set at the shipped decisions of `{args.checkpoint}`\n")
    lines.append(f"- score: {recognizer.scorer.describe()}; identification threshold "
                 f"{decisions.identification.threshold:.3f}: {decisions.identification.method}")
    if calibration.get("dev"):
        lines.append(f"- calibrated on: {calibration['dev']} ({calibration.get('made', {}).get('command', '')})")
    groups = sorted({g for key in ("unseen_named", "known_correct") for g in open_result[key]} - {"all"}) + ["all"]
    table_rows = [
        ["unseen speakers' clips named as a known speaker (goal <= 10%)",
         *rate_cells(open_result["unseen_named"], groups)],
        ["known speakers' held-out clips named correctly (goal >= 95%)",
         *rate_cells(open_result["known_correct"], groups)],
        [f"with {open_result['enrolled']} unseen speakers enrolled: their other clips named correctly",
         *rate_cells(open_result["enrolled_correct"], groups)],
        ["... clips of unseen speakers too few to enroll, named as anyone",
         *rate_cells(open_result["strangers_named"], groups)],
        ["... known speakers' held-out clips named correctly",
         *rate_cells(open_result["known_correct_with_enrolled"], groups)],
    ]
    lines.append("")
    lines.append(common.table(["figure", *groups], table_rows))
    lines.append("\nNot speech: " + "; ".join(f"{k}: {v}" for k, v in open_result["non_speech"].items()) + ".")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.new_voices", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="ours, with its shipped calibration")
    parser.add_argument("--audio-dir", required=True, type=Path, help="the many-speaker corpus")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CKPT", help="more models to compare")
    parser.add_argument("--no-resemblyzer", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("runs/new-voices-cache"),
                        help="where Resemblyzer's embeddings of these clips are kept between runs")
    parser.add_argument("--speakers", type=Path, default=common.BENCH / "dev_speakers.txt")
    parser.add_argument("--split", default="test")
    parser.add_argument("--speech", type=Path, default=common.SPEECH)
    parser.add_argument("--max-clips", type=int, default=MAX_CLIPS)
    parser.add_argument("--quick", action="store_true", help="a few speakers per source; print, do not write")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    extra = dict(item.split("=", 1) for item in args.model)
    checkpoint = load_checkpoint(args.checkpoint)
    speakers = read_speaker_list(args.speakers, args.split)
    if args.quick:
        by_source = defaultdict(list)
        for speaker in speakers:
            by_source[source_of(speaker)].append(speaker)
        speakers = [s for group in by_source.values() for s in group[:12]]
    unseen = [Clip(*row) for row in audio_clips(args.audio_dir, speakers, max_clips=args.max_clips)]
    measured = measure(checkpoint, unseen, args.audio_dir, args.speech,
                       {name: load_checkpoint(path) for name, path in extra.items()})
    tables, paired = measured.tables, None
    if not args.no_resemblyzer:
        peer = resemblyzer_embeddings(measured.unseen, args.audio_dir, args.cache)
        tables[PEER] = enroll_by_source(measured.unseen, peer)
        paired = paired_top1(measured.unseen, measured.embeddings, peer, measured.scorer)
    text = report(args, tables, paired, measured.open_set, checkpoint, measured.counts, time.perf_counter() - started)
    common.write_section("new_voices", text, None if args.quick else args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
