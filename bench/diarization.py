"""Who speaks when: diarization of synthetic conversations of unseen speakers, ours beside a d-vector peer.

    python -m bench.diarization --audio-dir CORPUS [--checkpoint CKPT] [--calibrate] [--long] [--quick]
        [--cache runs/diarization]

Conversations (training.conversations, whose docstring is the recipe) are built from the development
speakers of bench/dev_speakers.txt that no model of ours trained on: the `calibration` half tunes (speech
activity, window and hop, clustering, thresholds), the `test` half reports. Each conversation draws its
speakers from one source (LibriSpeech or Common Voice); a speaker's first 5 clips are kept out of it, to
enroll them.

Systems, on the same conversations in the same run:
- ours: `speaker_app.diarize`'s two halves, the pass over the audio (VAD, features, embeddings) and the
  rest (clustering, segments, names), each timed (RTF); `--long` times the command line itself.
- the classic d-vector pipeline: Resemblyzer's embeddings (pretrained GE2E; bench-only) of the same
  windows, with the same speech activity and clustering, its threshold calibrated the same way.
- ours with the conversation's speakers enrolled (5 clips each, the Enroll tab's path): the share of
  speech time given the right name, and of segments named right; and with every other speaker enrolled,
  the rest strangers: enrolled speech named right or wrongly, and strangers' speech named.

Metrics: DER by pyannote.metrics with overlap scored, at a collar of ±0.25 s around each reference boundary
(pyannote's collar=0.5, md-eval's `-c 0.25`) and without one; its missed speech / false alarm / confusion;
the share of conversations whose speaker count is exact; RTF. `--long` joins test conversations into one
file of over an hour and runs the command line on it in a subprocess: RTF and peak RSS.
`--calibrate` runs the ablations on the calibration half and writes the chosen settings to
speaker_app/diarization.json under the checkpoint's fingerprint.

Writes the `diarization` section of bench/RESULTS.md (not with --quick).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from pyannote.core import Annotation, Segment as Span, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate

from speaker_app.checkpoint import load_checkpoint
from speaker_app.clustering import Count
from speaker_app.diarize import (SETTINGS_FILE, Diarization, DiarizationSettings, Gathered, Windows, cluster,
                                 diarize_gathered, embed_windows, gather, window_crops)
from speaker_app.features import audio_blocks
from speaker_app.recognizer import Recognizer
from speaker_app.segments import Segment, label_speech, read_rttm, write_rttm
from speaker_app.speech_activity import SAMPLE_RATE
from training.calibrate import read_speaker_list
from training.conversations import RATE, Recipe, build

from . import common

SOURCES = ("librispeech", "commonvoice")  # sentences; Speech Commands' 1-s words make no conversation
MIN_CLIPS = 8  # a speaker needs 5 clips to enroll and a few more to speak
COLLAR = 0.5  # pyannote's collar is the whole width: +-0.25 s around each reference boundary
THRESHOLDS = np.round(np.arange(0.3, 1.31, 0.05), 2)
WINDOWS = [(1.0, 0.5), (1.5, 0.75), (1.0, 1.0), (1.5, 1.5)]  # (window, hop) seconds; 2 s / 1 s and 3 s / 1.5 s were worse
PENALTIES = (0.1, 0.3, 1.0)
LEAST_SPEECH = (0.0, 2.0, 4.0, 6.0, 8.0)  # seconds a cluster needs to stay a speaker of its own
# Windows and hops whose DER on the calibration conversations is within this of the lowest are not told apart
# (on 2026-12-07, 1.5-s windows every 1.5 s were 1.2 points behind 1-s windows every 0.5 s there, and 0.6 ahead
# on the test conversations): the one that embeds the least audio is taken, the pipeline's largest cost.
WINDOW_DER_SPREAD = 0.01
CENTRES = (0.0, 0.5)  # shares of the recording's mean window taken away before clustering
PEER = "Resemblyzer d-vectors (same VAD, windows, clustering)"
STRANGER = "stranger: "  # reference labels of speakers left out of the gallery


# -- conversations -------------------------------------------------------------------------------
def pools(audio_dir: Path, split: str) -> dict[str, dict[str, list[Path]]]:
    """{source: {speaker: sorted clips}} of the split's speakers with at least MIN_CLIPS clips."""
    found = {}
    for speaker in read_speaker_list(common.BENCH / "dev_speakers.txt", split):
        source = speaker.split("/")[0]
        clips = sorted(p for p in (audio_dir / speaker).glob("*") if p.suffix in (".flac", ".wav", ".mp3"))
        if source in SOURCES and len(clips) >= MIN_CLIPS:
            found.setdefault(source, {})[speaker] = clips
    return found


def conversations(audio_dir: Path, split: str, count: int, cache: Path, seed: int) -> list[dict]:
    """`count` conversations of the split, alternating sources, written to `cache` as WAV and RTTM (reused)."""
    by_source = pools(audio_dir, split)
    sources = [s for s in SOURCES if len(by_source.get(s, {})) >= 6]
    folder = cache / "conversations" / split
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index in range(count):
        source = sources[index % len(sources)]
        path, meta = folder / f"{split}-{index:03d}.wav", folder / f"{split}-{index:03d}.json"
        if not meta.is_file():
            conversation = build(by_source[source], Recipe(), seed, index, audio_dir, reserve=5)
            sf.write(path, conversation.wave, RATE, subtype="PCM_16")
            write_rttm(conversation.reference, path.stem, path.with_suffix(".rttm"))
            enroll = {s: [str(p) for p in by_source[source][s][:5]] for s in conversation.speakers}
            meta.write_text(json.dumps({"source": source, "speakers": conversation.speakers, "noise": conversation.noise,
                                        "snr_db": conversation.snr_db, "seconds": conversation.seconds,
                                        "enroll": enroll, "clips": conversation.clips}))
        made.append({**json.loads(meta.read_text()), "path": path,
                     "reference": read_rttm(path.with_suffix(".rttm"))[path.stem]})
    return made


# -- embedders -------------------------------------------------------------------------------------
class Resemblyzer:
    """The peer's embedder: each window's 16 kHz audio through Resemblyzer's `embed_utterance`."""

    def __init__(self, settings: DiarizationSettings, step: float):
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import normalize_volume

        self.encoder, self.normalize = VoiceEncoder("cpu", verbose=False), normalize_volume
        self.settings, self.step = settings, step

    def __call__(self, pieces) -> Windows:
        spans, rows = [], []
        for piece in pieces:
            for start, end in window_crops([piece], self.settings, self.step)[1]:
                wave = piece.wave[int((start - piece.start) * SAMPLE_RATE): int((end - piece.start) * SAMPLE_RATE)]
                rows.append(torch.from_numpy(self.encoder.embed_utterance(self.normalize(wave, -30, True))))
                spans.append((start, end))
        if not rows:
            return Windows([], torch.zeros(0, 0), torch.zeros(0, 0))
        return Windows(spans, torch.nn.functional.normalize(torch.stack(rows), dim=-1), torch.zeros(len(rows), 1))


def gathered_for(conversation: dict, system: str, settings: DiarizationSettings, recognizer: Recognizer,
                 cache: Path) -> tuple[Gathered, float]:
    """Speech regions, windows and embeddings of one conversation by one system, cached on disk; the seconds
    the pass took when it ran (VAD, features, embeddings)."""
    key = (f"{conversation['path'].stem}-{system}-{settings.activity.detector}-{settings.window}-{settings.hop}"
           f"-{recognizer.fingerprint if system == 'ours' else 'peer'}")
    stored = cache / "gathered" / f"{key}.pt"
    if stored.is_file():
        saved = torch.load(stored, weights_only=False)
        return Gathered(**{k: v for k, v in saved.items() if k != "wall"}), saved["wall"]
    config = recognizer.features_config
    embedder = (Resemblyzer(settings, config.frame_seconds) if system == "peer"
                else lambda pieces: embed_windows(recognizer.model, pieces, settings, config))
    started = time.perf_counter()
    result = gather(audio_blocks(conversation["path"], SAMPLE_RATE, block_seconds=60.0), embedder, settings, config)
    stored.parent.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - started
    torch.save({**result.__dict__, "wall": wall}, stored)
    return result, wall


# -- scoring ----------------------------------------------------------------------------------------
def annotation(segments: list[Segment]) -> Annotation:
    out = Annotation()
    for i, s in enumerate(segments):
        out[Span(s.start, s.end), i] = s.speaker
    return out


class Scores:
    """DER (both collars, overlap scored and not) and its parts, summed over conversations; speaker counts."""

    def __init__(self, full: bool = True):
        self.metrics = {"0.25": DiarizationErrorRate(collar=COLLAR)}
        if full:
            self.metrics.update({"0": DiarizationErrorRate(collar=0.0),
                                 "0.25 no overlap": DiarizationErrorRate(collar=COLLAR, skip_overlap=True)})
        self.counts = []  # (found, true)

    def add(self, reference: list[Segment], hypothesis: list[Segment], seconds: float):
        uem = Timeline([Span(0, seconds)])
        for metric in self.metrics.values():
            metric(annotation(reference), annotation(hypothesis), uem=uem)
        self.counts.append((len({s.speaker for s in hypothesis}), len({s.speaker for s in reference})))

    def der(self, which: str = "0.25") -> float:
        return abs(self.metrics[which])

    def parts(self, which: str = "0.25") -> dict[str, float]:
        metric = self.metrics[which]
        return {k: metric.accumulated_[k] / metric.accumulated_["total"]
                for k in ("missed detection", "false alarm", "confusion")}

    def exact_count(self) -> float:
        return float(np.mean([found == true for found, true in self.counts]))

    def count_error(self) -> float:
        return float(np.mean([abs(found - true) for found, true in self.counts]))


def hypothesis(gathered: Gathered, settings: DiarizationSettings, count: Count = Count()) -> list[Segment]:
    """Cluster gathered windows and label the speech, as the pipeline does (names: cluster numbers)."""
    if not gathered.spans:
        return []
    windows = gathered.windows()
    labels = cluster(windows.embeddings.numpy(), windows.spans, settings, count)
    return [Segment(a, b, f"s{label}") for a, b, label in label_speech(gathered.regions, windows.spans, labels.tolist())]


def score_all(convs: list[dict], gathered: list[Gathered], settings: DiarizationSettings, full: bool = False) -> Scores:
    scores = Scores(full)
    for conversation, found in zip(convs, gathered):
        scores.add(conversation["reference"], hypothesis(found, settings), conversation["seconds"])
    return scores


def best_threshold(convs, gathered, settings: DiarizationSettings) -> tuple[float, Scores]:
    """The agglomerative threshold of lowest DER (collar 0.25) on these conversations."""
    tried = {t: score_all(convs, gathered, replace(settings, method="agglomerative", threshold=float(t)))
             for t in THRESHOLDS}
    best = min(tried, key=lambda t: tried[t].der())
    return float(best), tried[best]


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


# -- calibration: the ablations ----------------------------------------------------------------------
def gather_all(convs, system, settings, recognizer, cache) -> tuple[list[Gathered], float]:
    """Every conversation's gathered windows, and the seconds of wall time per hour of audio it took."""
    results = [gathered_for(c, system, settings, recognizer, cache) for c in convs]
    return [g for g, _ in results], 3600 * sum(w for _, w in results) / sum(c["seconds"] for c in convs)


def vad_seconds_per_hour(convs, settings: DiarizationSettings) -> float:
    from speaker_app.speech_activity import speech_regions

    started = time.perf_counter()
    for c in convs:
        for block in audio_blocks(c["path"], SAMPLE_RATE, block_seconds=60.0):
            speech_regions(block, settings.activity)
    return 3600 * (time.perf_counter() - started) / sum(c["seconds"] for c in convs)


def calibrate(convs, recognizer, cache) -> tuple[DiarizationSettings, list[str]]:
    """VAD, then window and hop, then clustering, then window and hop again, each chosen by DER (collar 0.25) on
    `convs`; the tables."""
    base, lines = DiarizationSettings(), []
    rows, best = [], None
    for detector in ("silero", "energy"):
        settings = replace(base, activity=replace(base.activity, detector=detector))
        gathered, _ = gather_all(convs, "ours", settings, recognizer, cache)
        threshold, scores = best_threshold(convs, gathered, settings)
        parts = scores.parts()
        rows.append([detector, percent(scores.der()), percent(parts["missed detection"]),
                     percent(parts["false alarm"]), f"{vad_seconds_per_hour(convs, settings):.1f}"])
        if best is None or scores.der() < best[0]:
            best = (scores.der(), replace(settings, threshold=threshold))
    lines += ["#### Speech activity (window 1.5 s, hop 0.75 s, agglomerative at its best threshold)\n",
              common.table(["detector", "DER", "missed speech", "false alarm", "VAD s per hour of audio"], rows)]
    settings, gathered, table = choose_window(convs, best[1], recognizer, cache)
    lines += ["\n#### Window and hop (the chosen detector; agglomerative at each one's best threshold)\n", table]
    settings, table = choose_clustering(convs, gathered, settings)
    lines += ["\n#### Clustering (the chosen detector, window and hop)\n", table]
    # The windows again, now with the clustering they will serve (its threshold found again for each).
    settings, _, table = choose_window(convs, settings, recognizer, cache)
    return settings, lines + ["\n#### Window and hop again, with the chosen clustering\n", table]


def choose_window(convs, settings: DiarizationSettings, recognizer, cache) -> tuple[DiarizationSettings, list, str]:
    """The window and hop that embed the fewest seconds of audio among those within WINDOW_DER_SPREAD of the lowest
    DER with `settings` (the agglomerative threshold found for each), the conversations' gathered windows for it,
    and the table."""
    rows, tried_all = [], []
    for window, hop in WINDOWS:
        tried = replace(settings, window=window, hop=hop, min_window=min(settings.min_window, window))
        gathered, per_hour = gather_all(convs, "ours", tried, recognizer, cache)
        threshold, scores = (best_threshold(convs, gathered, tried) if tried.method == "agglomerative"
                             else (tried.threshold, score_all(convs, gathered, tried)))
        windows = 3600 * sum(len(g.spans) for g in gathered) / sum(c["seconds"] for c in convs)
        rows.append([f"{window} s / {hop} s", percent(scores.der()), f"{threshold:.2f}", f"{windows:.0f}",
                     f"{windows * window:.0f}", f"{per_hour:.0f}"])
        tried_all.append((scores.der(), windows * window, replace(tried, threshold=threshold), gathered))
    lowest = min(der for der, *_ in tried_all)
    _, _, chosen, gathered = min((t for t in tried_all if t[0] <= lowest + WINDOW_DER_SPREAD), key=lambda t: t[1])
    table = common.table(["window / hop", "DER", "threshold", "windows per hour", "seconds embedded per hour",
                          "VAD+features+embeddings s per hour (when first run)"], rows)
    return chosen, gathered, table


def choose_clustering(convs, gathered, settings: DiarizationSettings) -> tuple[DiarizationSettings, str]:
    """Agglomerative (calibrated threshold) and spectral (eigengap), each with and without resegmentation,
    with 0 to 8 s as the least speech of a speaker, and with the recording's mean taken away or not."""
    candidates = []
    for centre, minimum in itertools.product(CENTRES, LEAST_SPEECH):
        start = replace(settings, centre=centre, min_speaker_seconds=minimum)
        agglomerative_threshold, _ = best_threshold(convs, gathered, start)
        for method in ("agglomerative", "spectral"):
            for penalty in (0.0, *PENALTIES):
                tried = replace(start, method=method, threshold=agglomerative_threshold, switch_penalty=penalty)
                candidates.append((tried, score_all(convs, gathered, tried)))
    rows = [[f"{s.centre:g}", s.method, f"{s.threshold:.2f}" if s.method == "agglomerative" else "eigengap",
             f"{s.switch_penalty:g}" if s.switch_penalty else "none", f"{s.min_speaker_seconds:g} s",
             percent(scores.der()), percent(scores.exact_count()), f"{scores.count_error():.2f}"]
            for s, scores in candidates]
    chosen = min(candidates, key=lambda c: (c[1].der() - 0.01 * c[1].exact_count()))[0]
    table = common.table(["mean taken away", "method", "threshold", "resegmentation penalty", "least speech a speaker", "DER",
                          "count exact", "mean count error"], rows)
    return chosen, table


def store_settings(settings: DiarizationSettings, recognizer: Recognizer, how: str) -> None:
    stored = json.loads(SETTINGS_FILE.read_text()) if SETTINGS_FILE.is_file() else {}
    entry = {"settings": settings.to_dict(), "how": how}
    stored[recognizer.fingerprint] = entry
    stored["default"] = entry  # for a checkpoint not measured yet: the closest thing to calibrated
    SETTINGS_FILE.write_text(json.dumps(stored, indent=1) + "\n")


# -- the test half ----------------------------------------------------------------------------------
def run_ours(convs, recognizer: Recognizer, settings: DiarizationSettings, cache: Path):
    """The pipeline's two halves on each conversation's file (the pass over the audio, timed when it ran and
    cached; clustering and naming, timed now): scores, RTF, hypotheses."""
    scores, wall, found = Scores(), 0.0, []
    for c in convs:
        gathered, seconds = gathered_for(c, "ours", settings, recognizer, cache)
        started = time.perf_counter()
        result = diarize_gathered(gathered, recognizer, settings)
        wall += seconds + time.perf_counter() - started
        scores.add(c["reference"], result.segments, c["seconds"])
        found.append(result.segments)
    return scores, wall / sum(c["seconds"] for c in convs), found


def breakdown(convs, systems: dict[str, list[list[Segment]]]) -> str:
    """DER at ±0.25 s by SNR and by number of speakers, for each system's hypotheses."""
    groups = [(f"SNR {snr:g} dB", lambda c, snr=snr: c["snr_db"] == snr) for snr in sorted({c["snr_db"] for c in convs})]
    groups += [(f"{n} speakers", lambda c, n=n: len(c["speakers"]) == n)
               for n in sorted({len(c["speakers"]) for c in convs})]
    rows = []
    for name, chosen in groups:
        row = [name, sum(chosen(c) for c in convs)]
        for hyps in systems.values():
            scores = Scores(full=False)
            for c, hyp in zip(convs, hyps):
                if chosen(c):
                    scores.add(c["reference"], hyp, c["seconds"])
            row += [percent(scores.der()), percent(scores.exact_count())]
        rows.append(row)
    header = ["conversations", "n"] + [f"{label} {name}" for name in systems for label in ("DER", "count exact")]
    return common.table(header, rows)


def enrolled_and_diarized(conversation: dict, speakers: list[str], checkpoint, settings: DiarizationSettings,
                          gallery: Path, cache: Path) -> tuple[dict[str, str], Diarization]:
    """`speakers` of the conversation enrolled from their 5 kept clips (Recognizer.enroll, as the Enroll tab) into
    a new gallery, then the conversation diarized: ({speaker: enrolled name}, the diarization)."""
    recognizer = Recognizer(checkpoint, gallery)
    names = {s: recognizer.enroll(s.replace("/", " "), conversation["enroll"][s]) for s in speakers}
    gathered = gathered_for(conversation, "ours", settings, recognizer, cache)[0]
    return names, diarize_gathered(gathered, recognizer, settings)


def run_enrolled(convs, checkpoint, settings: DiarizationSettings, folder: Path, cache: Path) -> dict:
    """Each conversation's speakers enrolled from their 5 kept clips (Recognizer.enroll, as the Enroll tab),
    then diarized: speech time and segments given the right name."""
    right = total = segments_right = segments = ranked_right = 0.0
    for i, c in enumerate(convs):
        names, result = enrolled_and_diarized(c, sorted(c["enroll"]), checkpoint, settings, folder / f"all-{i}.json",
                                              cache)
        reference = annotation([r._replace(speaker=names[r.speaker]) for r in c["reference"]])
        nearest = {s.name: s.identification.matches[0].name for s in result.speakers}  # named or not
        for segment in result.segments:
            span = Span(segment.start, segment.end)
            overlap = {label: reference.crop(span).label_duration(label) for label in reference.labels()}
            right += overlap.get(segment.speaker, 0.0)
            ranked_right += overlap.get(nearest[segment.speaker], 0.0)
            segments_right += bool(overlap) and max(overlap, key=overlap.get) == segment.speaker
            segments += 1
        total += reference.get_timeline().support().duration()
    return {"speech named right": right / total, "segments named right": segments_right / segments,
            "segments": int(segments), "nearest right": ranked_right / total}


def run_half_enrolled(convs, checkpoint, settings: DiarizationSettings, folder: Path, cache: Path) -> dict:
    """Every other speaker of each conversation (in name order) enrolled, the rest strangers, as when people bring
    a recording: shares of the enrolled speakers' speech time named right and named as another enrolled
    speaker, and of the strangers' speech time named as anyone."""
    spoken = {"right": 0.0, "wrong": 0.0, "enrolled": 0.0, "stranger named": 0.0, "stranger": 0.0}
    for i, c in enumerate(convs):
        names, result = enrolled_and_diarized(c, sorted(c["enroll"])[::2], checkpoint, settings,
                                              folder / f"half-{i}.json", cache)
        reference = annotation([r._replace(speaker=names.get(r.speaker, STRANGER + r.speaker)) for r in c["reference"]])
        for label in reference.labels():
            spoken["stranger" if label.startswith(STRANGER) else "enrolled"] += reference.label_duration(label)
        for segment in result.segments:
            said = reference.crop(Span(segment.start, segment.end))
            for label in said.labels():
                seconds = said.label_duration(label)
                if label.startswith(STRANGER):
                    spoken["stranger named"] += seconds * (segment.speaker in names.values())
                elif segment.speaker == label:
                    spoken["right"] += seconds
                elif segment.speaker in names.values():
                    spoken["wrong"] += seconds
    return {"half: enrolled named right": spoken["right"] / spoken["enrolled"],
            "half: enrolled named wrongly": spoken["wrong"] / spoken["enrolled"],
            "half: strangers named": spoken["stranger named"] / spoken["stranger"]}


def run_long(convs, checkpoint: Path, cache: Path) -> dict:
    """The command line on one file of test conversations joined to over an hour: RTF and peak RSS."""
    path, seconds = cache / "long.wav", 0.0
    if not path.is_file():
        with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as out:
            for c in convs * 3:
                if seconds >= 3660:
                    break
                wave, _ = sf.read(c["path"], dtype="float32")
                out.write(wave)
                seconds += len(wave) / RATE
    seconds = sf.info(str(path)).duration
    command = [sys.executable, "-m", "speaker_app.diarize", str(path), "--rttm-dir", str(cache / "long-rttm"),
               "--checkpoint", str(checkpoint)]
    started = time.perf_counter()
    # A launcher runs the command and reports its peak RSS (wait4). Started from this process directly, the
    # command's peak would count this process's own memory: Linux keeps the largest RSS across fork and exec.
    launched = subprocess.run([sys.executable, "-c", PEAK_OF, *command], capture_output=True, text=True,
                              cwd=common.REPO)
    if launched.returncode:
        raise subprocess.CalledProcessError(launched.returncode, command, stderr=launched.stderr)
    wall = time.perf_counter() - started
    return {"seconds": seconds, "wall": wall, "rtf": wall / seconds, "peak_mb": int(launched.stdout) / 1024}


# run by a fresh interpreter: the command in argv, its output discarded, its peak RSS (KiB) printed
PEAK_OF = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
code = os.waitstatus_to_exitcode(status)
if code:
    sys.exit(code)
print(usage.ru_maxrss)
"""


# -- the report ---------------------------------------------------------------------------------------
def main_rows(systems: dict[str, tuple[Scores, float | None]]) -> list[list]:
    rows = []
    for name, (scores, rtf) in systems.items():
        parts = scores.parts()
        rows.append([name, percent(scores.der()), percent(scores.der("0")), percent(parts["missed detection"]),
                     percent(parts["false alarm"]), percent(parts["confusion"]), percent(scores.der("0.25 no overlap")),
                     percent(scores.exact_count()), f"{scores.count_error():.2f}", f"{rtf:.4f}" if rtf else "-"])
    return rows


def overlap_share(convs: list[dict]) -> float:
    """The share of reference speech time during which two or more speak."""
    overlapped = speech = 0.0
    for c in convs:
        reference = annotation(c["reference"])
        speech += reference.get_timeline().support().duration()
        overlapped += reference.get_overlap().duration()
    return overlapped / speech


def describe_data(convs: list[dict], split: str) -> str:
    minutes = sum(c["seconds"] for c in convs) / 60
    speakers = sorted({s for c in convs for s in c["speakers"]})
    by_count = np.bincount([len(c["speakers"]) for c in convs]).tolist()
    sources = {s: sum(c["source"] == s for c in convs) for s in SOURCES}
    return (f"{split}: {len(convs)} conversations, {minutes:.1f} min, {len(speakers)} distinct speakers; "
            f"speakers per conversation {dict((k, v) for k, v in enumerate(by_count) if v)}; by source {sources}; "
            f"{percent(overlap_share(convs))} of speech time overlapped")


def summary(convs_test, systems, enrolled, long) -> str:
    """The scoreboard's lines: DER of both systems, the count, the enrolled naming, speed and memory."""
    ours, peer = systems["ours"][0], systems[PEER][0]
    text = (f"{len(convs_test)} conversations, DER ±0.25 s {percent(ours.der())} (Resemblyzer {percent(peer.der())}), "
            f"count exact {percent(ours.exact_count())} ({percent(peer.exact_count())})")
    if enrolled:
        text += (f", enrolled speech named right {percent(enrolled['speech named right'])} (half enrolled: "
                 f"{percent(enrolled['half: enrolled named right'])}, strangers' speech named "
                 f"{percent(enrolled['half: strangers named'])})")
    if long:
        text += f"; {long['seconds'] / 60:.0f}-min file RTF {long['rtf']:.4f}, RSS {long['peak_mb']:.0f} MiB"
    return text + "."


def report(args, convs_test, convs_cal, settings, peer_settings, systems, enrolled, long, conditions, ablations,
           wall) -> str:
    title, header = common.header("Who speaks when (CPU)", wall).split("\n\n", 1)
    lines = [f"{title}\n", f"`{common.command_line()}`: "
             f"{summary(convs_test, systems, enrolled, long)}", common.MORE, header]
    lines.append(f"Data ({'see the recipe in training/conversations.py'}): {describe_data(convs_test, 'test')}. "
                 f"{describe_data(convs_cal, 'calibration')} (tuning only).\n")
    lines.append(f"Ours: `{args.checkpoint}`, settings {json.dumps(settings.to_dict())}. The peer's threshold: "
                 f"{peer_settings.threshold:.2f} (calibrated the same way). DER collar ±0.25 s (pyannote "
                 "collar=0.5) and 0 s, overlap scored; miss / false alarm / confusion at ±0.25 s; \"no overlap\": "
                 "DER at ±0.25 s with overlapped speech left out of scoring (the gap is what one voice per moment "
                 "costs). RTF: wall time / audio time of the whole pipeline on each file (torch threads "
                 f"{torch.get_num_threads()}, the app's setting; speech activity runs one block ahead in a thread of "
                 "its own); the pass over the audio (VAD, features, "
                 f"embeddings) was timed when it was first run and cached in `{args.cache}`, see the load average.\n")
    lines.append(common.table(["system", "DER ±0.25 s", "DER 0 s", "missed", "false alarm", "confusion",
                               "DER without overlap", "count exact", "mean count error", "RTF"], main_rows(systems)))
    ours, peer = systems["ours"][0].der(), systems[PEER][0].der()
    lines.append(f"\nOurs / peer DER at ±0.25 s: {ours / peer:.2f}.")
    if enrolled:
        lines.append(f"\nWith each conversation's speakers enrolled (5 clips each, none of them in the conversation): "
                     f"{percent(enrolled['speech named right'])} of reference speech time attributed to the right "
                     f"name; {percent(enrolled['segments named right'])} of {enrolled['segments']} segments named "
                     "right (their longest-overlapping reference speaker). Had every cluster been given its "
                     f"nearest candidate, threshold or not: {percent(enrolled['nearest right'])} of speech time "
                     "(the rest of the gap is the identification threshold's).")
        lines.append(f"\nWith every other speaker of each conversation enrolled and the rest strangers: "
                     f"{percent(enrolled['half: enrolled named right'])} of the enrolled speakers' speech time named "
                     f"right, {percent(enrolled['half: enrolled named wrongly'])} as another enrolled speaker; "
                     f"{percent(enrolled['half: strangers named'])} of the strangers' speech time named as one.")
    if long:
        lines.append(f"\nOne file of {long['seconds'] / 60:.1f} min (test conversations joined), by "
                     f"`python -m speaker_app.diarize` in a subprocess: {long['wall']:.1f} s wall, RTF "
                     f"{long['rtf']:.4f}, peak RSS {long['peak_mb']:.0f} MiB.")
    lines += conditions
    if ablations:
        lines.append("\n### Ablations on the calibration conversations (DER at ±0.25 s)\n")
        lines += ablations
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.diarization", description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", required=True, type=Path, help="the many-speaker corpus (SOURCE/SPEAKER/clips)")
    parser.add_argument("--checkpoint", type=Path, default=common.REPO / "checkpoints" / "default.pt")
    parser.add_argument("--calibrate", action="store_true", help="run the ablations and store the chosen settings")
    parser.add_argument("--long", action="store_true", help="also time an hour-long file and its peak memory")
    parser.add_argument("--conversations", type=int, default=50, help="test conversations")
    parser.add_argument("--calibration-conversations", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("runs/diarization"))
    parser.add_argument("--quick", action="store_true", help="4 conversations a half; print, do not write")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))  # the app's default (app.default_threads)
    checkpoint = load_checkpoint(args.checkpoint)
    recognizer = Recognizer(checkpoint)
    count_test, count_cal = (4, 4) if args.quick else (args.conversations, args.calibration_conversations)
    convs_cal = conversations(args.audio_dir, "calibration", count_cal, args.cache, args.seed)
    convs_test = conversations(args.audio_dir, "test", count_test, args.cache, args.seed)
    ablations_file = args.cache / f"ablations-{recognizer.fingerprint}.json"
    if args.calibrate:
        settings, ablations = calibrate(convs_cal, recognizer, args.cache)
        if not args.quick:  # a smoke run stores nothing: neither the settings nor the tables that chose them
            ablations_file.write_text(json.dumps(ablations))
            store_settings(settings, recognizer, f"{common.command_line()}, {time.strftime('%Y-%m-%d')}")
    else:
        from speaker_app.diarize import stored_settings

        settings, _ = stored_settings(recognizer.fingerprint)
        ablations = json.loads(ablations_file.read_text()) if ablations_file.is_file() else []
        if ablations:  # they were measured by the last --calibrate run, not by this one
            ablations = [f"From the last `--calibrate` run ({ablations_file}), which chose the settings above.\n",
                         *ablations]
    peer_gathered, _ = gather_all(convs_cal, "peer", settings, recognizer, args.cache)
    peer_settings = replace(settings, threshold=best_threshold(convs_cal, peer_gathered, settings)[0])
    ours_scores, rtf, ours_found = run_ours(convs_test, recognizer, settings, args.cache)
    systems = {"ours": (ours_scores, rtf)}
    peer_test, _ = gather_all(convs_test, "peer", peer_settings, recognizer, args.cache)
    peer_found = [hypothesis(g, peer_settings) for g in peer_test]
    systems[PEER] = (score_all(convs_test, peer_test, peer_settings, full=True), None)
    conditions = breakdown(convs_test, {"ours": ours_found, "peer": peer_found})
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        enrolled = {**run_enrolled(convs_test, checkpoint, settings, Path(folder), args.cache),
                    **run_half_enrolled(convs_test, checkpoint, settings, Path(folder), args.cache)}
    long = run_long(convs_test, args.checkpoint, args.cache) if args.long else None
    text = report(args, convs_test, convs_cal, settings, peer_settings, systems, enrolled, long,
                  ["\n### By condition, on the test conversations\n", conditions], ablations, time.perf_counter() - started)
    common.write_section("diarization", text, None if args.quick else common.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
