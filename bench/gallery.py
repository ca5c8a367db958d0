"""The gallery scenario: unseen speakers enrolled through the app, then named, or not.

    python -m bench.gallery --checkpoint CKPT --audio-dir CORPUS [--speech ../shared/speech]
        [--no-resemblyzer] [--cache runs/new-voices-cache] [--quick] [--results bench/RESULTS.md]

The product's own protocol (training.gallery_scenario): the test half's unseen speakers of
bench/dev_speakers.txt are dealt per source into an enrolled half and a stranger half; the
enrolled give 1, 3 or 5 clips, or one 20-30 s recording, to `Recognizer.enroll`, and their next 8
clips, and the strangers' first 8, are identified at the checkpoint's shipped decisions. It
reports enrolled clips named correctly, wrongly and "unknown", strangers' clips named, per source
and overall, the DET trade-off (named correctly at 1, 2 and 5 % of strangers named), and the 31
speakers' held-out clips with the 5-clip gallery enrolled; and, for 5 clips and one recording,
galleries of 1, 3, 10 and 30 of the enrolled speakers (the thresholds depend on the gallery's
size). Resemblyzer runs the same plan
(cosine against the mean of its enrollment embeddings; for the recording, of the clips joined
into it) with its threshold set on the calibration half to name at most the share of strangers
our decisions are calibrated for. It rewrites the `gallery` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import torch

from speaker_app.checkpoint import Checkpoint, load_checkpoint
from speaker_app.recognizer import Recognizer
from speaker_app.speech import check_speech
from training.data import source_of
from training.dev_clips import audio_clips, read_speaker_list
from training.gallery_calibration import MAX_STRANGERS_NAMED
from training.gallery_scenario import (ENROLLMENTS, STRANGER_RATES, Outcome, Plan, answers, enroll_plan, outcomes,
                                       peer_outcomes, plan, rates, shift_for, trade_off)
from training.new_voices import Clip, Embedded, decoded, embed_ours, resemblyzer_embeddings

from . import common

PEER = "Resemblyzer"
MAX_CLIPS = 40  # per speaker, seeded, as bench.new_voices (so Resemblyzer's cache serves both)
GALLERY_SIZES, DRAWS = (1, 3, 10, 30), 3  # smaller galleries drawn from the enrolled half
BY_SIZE = ("5 clips", "one recording")  # the enrollments measured in smaller galleries


class Split(NamedTuple):
    """A development half's clips that decode, as our model sees them."""
    clips: list[Clip]
    embedded: Embedded
    seconds: list[float]  # seconds of speech of each clip
    speech: list[bool]  # passes the speech check (the app enrolls only those)

    @property
    def speakers(self) -> list[str]:
        return [c.speaker for c in self.clips]

    def plan(self, enrollment: str) -> Plan:
        return plan(self.speakers, [c.path for c in self.clips], self.seconds, enrollment, usable=self.speech)


def load_split(checkpoint: Checkpoint, audio_dir: Path, speakers: list[str], max_clips: int, embed: bool = True) -> Split:
    """The split's clips as our model sees them; without `embed`, only what the plans need (no embeddings)."""
    clips, features, skipped = decoded([Clip(*row) for row in audio_clips(audio_dir, speakers, max_clips=max_clips)],
                                       audio_dir, checkpoint.feature_config)
    if skipped:
        print(f"{skipped} clips did not decode and are left out", file=sys.stderr)
    frame_seconds = checkpoint.feature_config.frame_seconds
    embedded = embed_ours(checkpoint, features) if embed else Embedded(None, None, features)
    return Split(clips, embedded, [len(f) * frame_seconds for f in features], [check_speech(f).speech for f in features])


def ours(checkpoint: Checkpoint, split: Split, the_plan: Plan, known: Split | None = None) -> tuple[list[Outcome], float]:
    """Our outcomes on `split` with `the_plan`'s speakers enrolled, and the share of the known speakers' clips
    named correctly with that gallery enrolled (NaN without them)."""
    with tempfile.TemporaryDirectory() as folder:
        recognizer = Recognizer(checkpoint, Path(folder) / "gallery.json")
        names = enroll_plan(recognizer, the_plan, split.embedded.features)
        embedded = split.embedded
        said = answers(recognizer, the_plan.targets + the_plan.strangers, embedded.embeddings, embedded.logits,
                       embedded.features)
        known_correct = math.nan
        if known is not None and known.clips:
            rows = list(range(len(known.clips)))
            heard = answers(recognizer, rows, known.embedded.embeddings, known.embedded.logits, known.embedded.features)
            known_correct = sum(heard[r].best is not None and heard[r].best.name == known.clips[r].speaker
                                for r in rows) / len(rows)
    return outcomes(the_plan, split.speakers, said, names), known_correct


def smaller_galleries(the_plan: Plan, speakers: list[str], sizes=GALLERY_SIZES, draws: int = DRAWS) -> list[Plan]:
    """Galleries of `sizes` of the plan's enrolled speakers (seeded draws), each tested on its speakers' next
    clips and on every stranger's: a visitor alone, a family, a team."""
    enrolled, plans = sorted(the_plan.enrolled), []
    for size in sizes:
        for draw in range(draws):
            chosen = set(random.Random(f"{size}/{draw}").sample(enrolled, min(size, len(enrolled))))
            plans.append(Plan(the_plan.enrollment, {s: the_plan.enrolled[s] for s in sorted(chosen)},
                              [r for r in the_plan.targets if speakers[r] in chosen], the_plan.strangers))
    return plans


def peer_embeddings(split: Split, audio_dir: Path, cache: Path) -> torch.Tensor:
    """Resemblyzer's embeddings of the clips any plan uses (zeros for the others, never read)."""
    used = sorted({r for e in ENROLLMENTS for p in [split.plan(e)] for rows in
                   [*p.enrolled.values(), p.targets, p.strangers] for r in rows})
    embedded = resemblyzer_embeddings([split.clips[r] for r in used], audio_dir, cache)
    out = torch.zeros(len(split.clips), embedded.shape[1])
    out[used] = embedded
    return out


def peer(calibration: Split, calibration_embeddings: torch.Tensor, test: Split, test_embeddings: torch.Tensor,
         enrollment: str) -> list[Outcome]:
    """Resemblyzer's outcomes on the test half, its threshold set on the calibration half."""
    tuned = peer_outcomes(calibration.plan(enrollment), calibration.speakers, calibration_embeddings)
    threshold = shift_for(tuned, MAX_STRANGERS_NAMED)
    return peer_outcomes(test.plan(enrollment), test.speakers, test_embeddings, threshold)


def percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def report(args, results: dict, known: dict, counts: dict, wall_s: float, by_size: dict) -> str:
    """results: {(model, enrollment): outcomes}; known: {enrollment: share of known clips named correctly};
    by_size: {(enrollment, gallery size): outcomes of its drawn galleries}."""
    overall = {key: rates(found)["all"] for key, found in results.items()}
    headline = overall[("ours", "5 clips")]
    lines = [common.header("Gallery: unseen speakers enrolled through the app", wall_s),
             f"The product's own protocol on the test half of bench/dev_speakers.txt ({counts['speakers']} speakers, "
             f"{counts['clips']} clips, {counts['sources']} sources): per source, half the speakers enrolled through "
             "`Recognizer.enroll`, half strangers; each one's next 8 clips identified at the shipped decisions. "
             f"{PEER}'s threshold is set on the calibration half to name {MAX_STRANGERS_NAMED:.0%} of strangers.", "",
             f"With 5 clips enrolled, ours names **{percent(headline['correct'])}** of the enrolled speakers' clips "
             f"correctly ({percent(headline['wrong'])} wrongly) and **{percent(headline['strangers_named'])}** of the "
             f"strangers' clips; the 31 speakers' held-out clips: {percent(known['5 clips'])} named correctly.", ""]
    header = ["enrollment", "model", "enrolled: correct", "wrong", "unknown", "strangers named",
              *(f"correct at {r:.0%} strangers" for r in STRANGER_RATES), "31 speakers correct"]
    rows = []
    for (model, enrollment), found in results.items():
        r, det = overall[(model, enrollment)], trade_off(found)
        rows.append([enrollment, model, percent(r["correct"]), percent(r["wrong"]), percent(r["unknown"]),
                     percent(r["strangers_named"]), *(percent(det[rate]) for rate in STRANGER_RATES),
                     percent(known[enrollment]) if model == "ours" else "-"])
    lines += [common.table(header, [row for row in rows if row[0] == "5 clips"]), "", common.MORE, "",
              "### Every enrollment", "", common.table(header, rows), "", "### Per source, 5 clips enrolled", ""]
    by_source = {model: rates(results[(model, "5 clips")]) for model, enrollment in results if enrollment == "5 clips"}
    source_rows = []
    for source in by_source["ours"]:
        for model, table in by_source.items():
            r = table.get(source)
            if r:
                source_rows.append([source or "(none)", model, f"{r['targets']} / {r['strangers']}", percent(r["correct"]),
                                    percent(r["wrong"]), percent(r["unknown"]), percent(r["strangers_named"])])
    lines.append(common.table(["source", "model", "clips: enrolled / strangers", "correct", "wrong", "unknown",
                               "strangers named"], source_rows))
    size_rows = []
    for (enrollment, size), found in by_size.items():
        r = rates(found)["all"]
        size_rows.append([enrollment, size, r["targets"], percent(r["correct"]), percent(r["wrong"]),
                          percent(r["unknown"]), percent(r["strangers_named"])])
    if size_rows:
        lines += ["", "### Smaller galleries (ours)", "",
                  f"Galleries of {', '.join(map(str, GALLERY_SIZES))} speakers drawn from the enrolled half ({DRAWS} "
                  "draws each), enrolled the same way; each gallery's speakers' next clips and every stranger's "
                  "clips identified. The decisions' thresholds depend on the gallery's size.", "",
                  common.table(["enrollment", "enrolled speakers", "enrolled clips", "correct", "wrong", "unknown",
                                "strangers named"], size_rows)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/default.pt"))
    parser.add_argument("--audio-dir", required=True, type=Path, help="the many-speaker corpus (corpora/build*.sh)")
    parser.add_argument("--speech", type=Path, default=common.SPEECH, help="the 31 speakers' folder")
    parser.add_argument("--speakers", type=Path, default=common.BENCH / "dev_speakers.txt")
    parser.add_argument("--no-resemblyzer", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("runs/new-voices-cache"),
                        help="where Resemblyzer's embeddings are kept between runs")
    parser.add_argument("--max-clips", type=int, default=MAX_CLIPS)
    parser.add_argument("--quick", action="store_true", help="a few speakers per source; print, do not write")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    checkpoint = load_checkpoint(args.checkpoint)

    def speakers(split: str) -> list[str]:
        chosen = read_speaker_list(args.speakers, split)
        if args.quick:
            by_source = defaultdict(list)
            for speaker in chosen:
                by_source[source_of(speaker)].append(speaker)
            chosen = [s for group in by_source.values() for s in group[:6]]
        return chosen

    test = load_split(checkpoint, args.audio_dir, speakers("test"), args.max_clips)
    held_out = checkpoint.info.get("training_data", {}).get("held_out_clips", [])
    known = None
    if held_out and args.speech.is_dir():
        clips, features, _ = decoded([Clip(c.rsplit("/", 1)[0], c) for c in held_out], args.speech,
                                     checkpoint.feature_config)
        known = Split(clips, embed_ours(checkpoint, features), [], [])
    results, known_correct, by_size = {}, {}, {}
    for enrollment in ENROLLMENTS:
        the_plan = test.plan(enrollment)
        results[("ours", enrollment)], known_correct[enrollment] = ours(checkpoint, test, the_plan, known)
        if enrollment in BY_SIZE:
            for gallery in smaller_galleries(the_plan, test.speakers):
                found, _ = ours(checkpoint, test, gallery)
                by_size.setdefault((enrollment, len(gallery.enrolled)), []).extend(found)
            by_size[(enrollment, f"all {len(the_plan.enrolled)}")] = results[("ours", enrollment)]
    if not args.no_resemblyzer:
        calibration = load_split(checkpoint, args.audio_dir, speakers("calibration"), args.max_clips, embed=False)
        calibration_peer = peer_embeddings(calibration, args.audio_dir, args.cache)
        test_peer = peer_embeddings(test, args.audio_dir, args.cache)
        for enrollment in ENROLLMENTS:
            results[(PEER, enrollment)] = peer(calibration, calibration_peer, test, test_peer, enrollment)
    counts = {"speakers": len(set(test.speakers)), "clips": len(test.clips),
              "sources": len({source_of(s) for s in test.speakers})}
    text = report(args, results, known_correct, counts, time.perf_counter() - started, by_size)
    common.write_section("gallery", text, None if args.quick else args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
