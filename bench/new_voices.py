"""New voices: enroll-5 identification and open-set decisions on unseen speakers, ours beside peers.

    python -m bench.new_voices --checkpoint CKPT --audio-dir CORPUS [--model NAME=CKPT ...] [--no-resemblyzer]
        [--speakers bench/dev_speakers.txt] [--split test] [--speech ../shared/speech] [--max-clips 40]
        [--cache runs/new-voices-cache] [--quick]

CORPUS is the many-speaker corpus (../shared/corpora/build.sh), `SOURCE/SPEAKER/clips`;
the speakers are the `--split` half of `--speakers` (bench/dev_speakers.txt: the
development speakers no model of ours trains on; thresholds are fitted on the other
half, `calibration`), at most --max-clips clips each (seeded choice).

1. Enroll-5, per source and over all sources: every speaker with 6 or more clips is
   enrolled from its first 5 (by name); the rest are identified among the enrolled
   speakers of the group (top-1), and every clip-vs-speaker score is a trial for the
   EER and minDCF (p_target 0.01). For each model: ours (--checkpoint: cosine, and
   AS-norm when it carries a cohort), each `--model NAME=CKPT` (any checkpoint of this
   project, such as the course baseline) and Resemblyzer (pretrained GE2E, its weights in
   its wheel; bench-only, never used to train ours).
2. Open set at the checkpoint's shipped decisions (speaker_app.recognizer, exactly as
   the app decides): the share of the unseen speakers' clips named as one of the
   model's speakers; the share of the model's speakers' held-out clips
   (`info["training_data"]["held_out_clips"]` under --speech) named correctly; then the
   same with every enrollable unseen speaker enrolled from 5 clips: their other clips
   named correctly, and the clips of the unseen speakers too few to enroll named as
   anyone; and four inputs that are not speech.

Writes the `new_voices` section of bench/RESULTS.md (not with --quick).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from speaker_app.checkpoint import Checkpoint, load_checkpoint
from speaker_app.features import AudioError, FeatureConfig, features_from_file
from speaker_app.inference import infer
from speaker_app.recognizer import Recognizer
from speaker_app.scoring import centroid
from speaker_app.speech import check_speech
from training.calibrate import audio_clips, read_speaker_list, source_of
from training.evaluate import enrollment

from . import common

ENROLL = 5
MAX_CLIPS = 40


class Clip(NamedTuple):
    speaker: str
    path: str  # relative to its root


class Embedded(NamedTuple):
    embeddings: torch.Tensor  # (N, E) unit
    logits: torch.Tensor | None  # (N, C) for models of this project
    features: list[torch.Tensor]  # (T_i, n_mels) each


# -- embeddings ----------------------------------------------------------------------------------
def features_of(clips: list[Clip], root: Path, config: FeatureConfig) -> list[torch.Tensor | None]:
    out = []
    for clip in clips:
        try:
            out.append(features_from_file(root / clip.path, config))
        except AudioError as error:
            print(f"skipped {clip.path}: {error}", file=sys.stderr)
            out.append(None)
    return out


def embed_ours(checkpoint: Checkpoint, features: list[torch.Tensor]) -> Embedded:
    outputs = infer(checkpoint.build_model(), features)
    return Embedded(outputs.embeddings, outputs.logits, features)


def resemblyzer_embeddings(clips: list[Clip], root: Path, cache: Path | None = None) -> torch.Tensor:
    """(N, 256) GE2E embeddings: the package's own preprocessing (16 kHz, volume, VAD trimming).
    They depend only on the clips, so `cache` keeps them for the next run (an hour of CPU for ~2,700 clips)."""
    import librosa
    from resemblyzer import VoiceEncoder, preprocess_wav

    key = hashlib.sha1("\n".join([str(root.resolve()), *(c.path for c in clips)]).encode()).hexdigest()[:16]
    cached = cache / f"resemblyzer-{key}.pt" if cache else None
    if cached and cached.is_file():
        return torch.load(cached, weights_only=True)

    encoder = VoiceEncoder("cpu", verbose=False)
    rows = []
    for clip in clips:
        wave = preprocess_wav(root / clip.path)
        if len(wave) < 1600:  # the VAD kept under 0.1 s: use the whole clip
            wave, _ = librosa.load(root / clip.path, sr=16000)
        rows.append(torch.from_numpy(encoder.embed_utterance(wave)))
    embeddings = torch.nn.functional.normalize(torch.stack(rows), dim=-1)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(embeddings, cached)
    return embeddings


# -- 1. enroll-5 ---------------------------------------------------------------------------------
def enroll_by_source(clips: list[Clip], embeddings: torch.Tensor, scorer=None) -> dict[str, dict]:
    """{source or "all": training.evaluate.enrollment's result} for groups with 2+ enrollable speakers."""
    groups = defaultdict(list)
    for i, clip in enumerate(clips):
        groups[source_of(clip.speaker)].append(i)
    groups["all"] = list(range(len(clips)))
    results = {}
    for group, rows in sorted(groups.items()):
        names, keys = [clips[i].speaker for i in rows], [clips[i].path for i in rows]
        counts = defaultdict(int)
        for name in names:
            counts[name] += 1
        if sum(n > ENROLL for n in counts.values()) >= 2:
            results[group] = enrollment(names, keys, embeddings[rows], ENROLL, scorer)
    return results


# -- 2. open set ---------------------------------------------------------------------------------
def answers(recognizer: Recognizer, embedded: Embedded) -> list:
    """The app's Identification of each clip."""
    return [recognizer.decide(embedded.embeddings[i], embedded.logits[i], 0.0, [], 5, check_speech(f))
            for i, f in enumerate(embedded.features)]


def rate_by_source(speakers: list[str], hits: list[bool]) -> dict[str, tuple[float, int]]:
    """{source or "all": (share of hits, clips)}."""
    groups = defaultdict(list)
    for speaker, hit in zip(speakers, hits):
        groups[source_of(speaker)].append(hit)
        groups["all"].append(hit)
    return {g: (sum(h) / len(h), len(h)) for g, h in sorted(groups.items())}


def non_speech_inputs(recognizer: Recognizer) -> dict[str, str]:
    """What the app answers to a 1 kHz sine, white noise, a constant and a random (T, 40) tensor."""
    t = np.arange(48000) / 16000
    inputs = {"1 kHz sine": (16000, (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)),
              "white noise": (16000, (0.3 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)),
              "constant (300, 40) tensor": torch.full((300, 40), -5.0),
              "random (300, 40) tensor": torch.randn(300, 40, generator=torch.Generator().manual_seed(0)) * 3 - 5}
    said = {}
    for name, source in inputs.items():
        result = recognizer.identify(source)
        said[name] = ("no speech" if not result.speech else "unknown" if result.best is None
                      else f"named {result.best.name}")
    return said


def open_set(checkpoint: Checkpoint, unseen: list[Clip], unseen_embedded: Embedded, known: list[Clip],
             known_embedded: Embedded) -> dict:
    recognizer = Recognizer(checkpoint)
    result = {"unseen_named": rate_by_source([c.speaker for c in unseen],
                                             [a.best is not None for a in answers(recognizer, unseen_embedded)]),
              "known_correct": rate_by_source([c.speaker for c in known],
                                              [a.best is not None and a.best.name == c.speaker
                                               for a, c in zip(answers(recognizer, known_embedded), known)]),
              "non_speech": non_speech_inputs(recognizer)}
    with tempfile.TemporaryDirectory() as folder:
        recognizer = Recognizer(checkpoint, Path(folder) / "gallery.json")
        by_speaker = defaultdict(list)
        for i, clip in enumerate(unseen):
            by_speaker[clip.speaker].append(i)
        enrolled, targets, strangers = {}, [], []
        for speaker, rows in sorted(by_speaker.items()):
            rows = sorted(rows, key=lambda i: unseen[i].path)
            if len(rows) > ENROLL:
                enrolled[speaker] = recognizer.gallery.add(speaker, centroid(unseen_embedded.embeddings[rows[:ENROLL]]),
                                                           ENROLL)
                targets += rows[ENROLL:]
            else:
                strangers += rows
        said = answers(recognizer, unseen_embedded)
        result["enrolled"] = len(enrolled)
        result["enrolled_correct"] = rate_by_source(
            [unseen[i].speaker for i in targets],
            [said[i].best is not None and said[i].best.name == enrolled[unseen[i].speaker] for i in targets])
        result["strangers_named"] = rate_by_source([unseen[i].speaker for i in strangers],
                                                   [said[i].best is not None for i in strangers])
        result["known_correct_with_enrolled"] = rate_by_source(
            [c.speaker for c in known], [a.best is not None and a.best.name == c.speaker
                                         for a, c in zip(answers(recognizer, known_embedded), known)])
    return result


# -- the report ----------------------------------------------------------------------------------
def percent(value) -> str:
    return f"{100 * value:.1f}%"


def enroll_rows(name: str, results: dict[str, dict]) -> list[list]:
    return [[name, group, r["enroll_speakers"], r["enroll_test_clips"], percent(r["enroll_top1"]), percent(r["eer"]),
             f"{r['min_dcf']:.3f}"] for group, r in results.items()]


def rate_cells(rates: dict, groups: list[str]) -> list[str]:
    return [f"{percent(rates[g][0])} of {rates[g][1]}" if g in rates else "-" for g in groups]


def report(args, tables: dict, open_result: dict, checkpoint: Checkpoint, counts: dict, wall_s: float) -> str:
    lines = [common.header("New voices: unseen speakers, enroll-5 and open set", wall_s)]
    speakers = args.speakers.resolve()
    shown = speakers.relative_to(common.REPO) if speakers.is_relative_to(common.REPO) else speakers
    lines.append(f"Speakers: the `{args.split}` half of `{shown}` under the many-speaker corpus "
                 f"({counts['speakers']} speakers, {counts['clips']} clips, at most {args.max_clips} per speaker; "
                 f"undecodable clips left out: {counts['skipped']}). Thresholds were fitted on the other half. "
                 f"Known speakers' held-out clips: {counts['known']} under `{args.speech}`.\n")
    lines.append(f"### Enroll-{ENROLL}: identify among the enrolled, clip-vs-speaker EER and minDCF (p_target 0.01)\n")
    rows = [row for name, results in tables.items() for row in enroll_rows(name, results)]
    lines.append(common.table(["model", "source", "enrolled speakers", "test clips", "top-1", "EER", "minDCF"], rows))
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
    known = [Clip(c.rsplit("/", 1)[0], c) for c in checkpoint.info.get("training_data", {}).get("held_out_clips", [])]
    features = features_of(unseen, args.audio_dir, checkpoint.feature_config)
    skipped = sum(f is None for f in features)
    unseen = [c for c, f in zip(unseen, features) if f is not None]
    features = [f for f in features if f is not None]
    known_features = features_of(known, args.speech, checkpoint.feature_config)
    known = [c for c, f in zip(known, known_features) if f is not None]
    known_features = [f for f in known_features if f is not None]

    ours = embed_ours(checkpoint, features)
    tables = {"ours (cosine)": enroll_by_source(unseen, ours.embeddings)}
    scorer = Recognizer(checkpoint).scorer
    if scorer.cohort is not None:
        tables["ours (AS-norm)"] = enroll_by_source(unseen, ours.embeddings, scorer)
    for name, path in extra.items():
        other = load_checkpoint(path)
        other_features = features if other.feature_config == checkpoint.feature_config else \
            features_of(unseen, args.audio_dir, other.feature_config)
        tables[name] = enroll_by_source(unseen, embed_ours(other, other_features).embeddings)
    if not args.no_resemblyzer:
        peer = resemblyzer_embeddings(unseen, args.audio_dir, args.cache)
        tables["Resemblyzer (pretrained GE2E)"] = enroll_by_source(unseen, peer)
    open_result = open_set(checkpoint, unseen, ours, known, embed_ours(checkpoint, known_features))
    counts = {"speakers": len({c.speaker for c in unseen}), "clips": len(unseen), "skipped": skipped,
              "known": len(known)}
    text = report(args, tables, open_result, checkpoint, counts, time.perf_counter() - started)
    common.write_section("new_voices", text, None if args.quick else args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
