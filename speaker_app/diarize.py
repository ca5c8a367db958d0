"""Who speaks when: a recording of several voices -> timed segments, each named or "unknown N".

    python -m speaker_app.diarize AUDIO [AUDIO ...] --rttm-dir DIR [--checkpoint CKPT] [--gallery FILE]
        [--num-speakers N | --min-speakers A --max-speakers B]

A chain of small steps, each swappable (bench/diarization.py measures each against an alternative):

1. speech activity (speaker_app.speech_activity): the audio is read block by block (BLOCK_SECONDS), and
   each block's speech regions found; a region still open at a block's end is carried into the next one.
   This runs one block ahead in a thread, beside the next steps (on a second core where there is one).
2. windows: each region (cut into pieces of at most `max_piece` seconds) gets the features of the one
   pipeline without its silence removal (features.aligned_features), and windows of `window` seconds
   every `hop` seconds; a piece shorter than a window is one window if it lasts `min_window`.
3. embeddings: the checkpoint's model embeds the windows in batches, and scores them (logits).
4. clustering (speaker_app.clustering): the unit embeddings into speakers, their number estimated.
5. segments (speaker_app.segments): each moment of speech takes the label of the nearest window.
6. naming: each speaker's unit mean embedding and mean logits go through `Recognizer.decide`, the rule of
   Identify, with its seconds of speech; a speaker below the threshold is "unknown 1", "unknown 2", ...

Memory stays flat on long files: two blocks of audio (one embedded, the next searched for speech) and one
block's features are held at a time, and what the block freed is handed back (release_freed_memory); what
grows is one embedding per window (an hour: ~6,000 x E floats) and, at the end, the clustering's pairwise
distances (an hour: ~150 MB). One voice per moment: overlapped speech is labelled with one of its speakers
(its cost is measured in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from .clustering import Count, absorb_small, agglomerative, centred, resegment, spectral
from .configs import from_dict
from .features import AudioError, FeatureConfig, aligned_features, audio_blocks, to_mono
from .inference import length_batches
from .recognizer import Identification, InputError, Recognizer
from .segments import Segment, Span, clock, label_speech, write_rttm
from .speech_activity import SAMPLE_RATE, ActivitySettings, Region, merge_touching, speech_regions

BLOCK_SECONDS = 60.0  # audio read, searched for speech and embedded at a time
MAX_CARRY_SECONDS = 30.0  # a region open at a block's end is carried into the next block up to this long
MIN_SECONDS = 1.0  # shorter recordings are refused: too little to tell voices apart
MAX_CLIPS = 5  # an enrollment takes 1-5 clips: a speaker's longest segments
SETTINGS_FILE = Path(__file__).with_name("diarization.json")
BATCH_FRAMES = 16000  # window frames per forward pass (~130 windows of 1.2 s)


@dataclass(frozen=True)
class DiarizationSettings:
    """How to diarize. The defaults are the calibrated choice for the shipped model, measured on the
    benchmark's calibration conversations (`python -m bench.diarization --calibrate`, which writes
    speaker_app/diarization.json for the checkpoint it measured; see bench/RESULTS.md)."""

    activity: ActivitySettings = field(default_factory=ActivitySettings)
    window: float = 1.5  # seconds per embedded window
    hop: float = 0.75  # seconds between window starts
    min_window: float = 0.5  # a piece of speech shorter than this is not embedded: it takes its neighbour's label
    max_piece: float = 20.0  # seconds: longer speech regions are cut into pieces (features memory)
    centre: float = 0.0  # share of the recording's mean window embedding taken from each before clustering
    method: str = "agglomerative"  # or "spectral" (speaker_app.clustering)
    threshold: float = 0.6  # agglomerative: cosine distance at which clusters stop merging
    switch_penalty: float = 0.0  # >0: resegment by a Viterbi pass with this cost of a speaker change
    min_speaker_seconds: float = 2.0  # a cluster with less speech is folded into its nearest neighbour

    def __post_init__(self):
        if not 0 < self.min_window <= self.window or not 0 < self.hop <= self.window:
            raise ValueError(f"need 0 < min_window <= window and 0 < hop <= window: {self}")
        if self.max_piece < self.window:
            raise ValueError(f"max_piece ({self.max_piece}) must hold a window ({self.window})")
        if self.method not in ("agglomerative", "spectral"):
            raise ValueError(f"method must be 'agglomerative' or 'spectral', got {self.method!r}")
        if not 0 <= self.centre <= 1:
            raise ValueError(f"centre is a share of the mean, between 0 and 1: {self}")
        if self.switch_penalty < 0 or self.min_speaker_seconds < 0:
            raise ValueError(f"switch_penalty and min_speaker_seconds must not be negative: {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DiarizationSettings:
        return from_dict(cls, data)


def stored_settings(fingerprint: str, path: Path = SETTINGS_FILE) -> tuple[DiarizationSettings, str]:
    """The settings calibrated for the model with `fingerprint`, else the file's default entry, else the
    dataclass defaults; and a sentence saying which."""
    stored = json.loads(path.read_text()) if path.is_file() else {}
    if fingerprint in stored:
        entry = stored[fingerprint]
        return DiarizationSettings.from_dict(entry["settings"]), f"calibrated for this model: {entry['how']}"
    if "default" in stored:
        entry = stored["default"]
        return (DiarizationSettings.from_dict(entry["settings"]),
                f"calibrated for another model ({entry['how']}); `python -m bench.diarization --calibrate` fits them")
    return DiarizationSettings(), "uncalibrated defaults"


# -- windows and embeddings ----------------------------------------------------------------------
class Piece(NamedTuple):
    start: float  # seconds from the start of the recording
    features: torch.Tensor  # (T, n_mels), frame t centred at start + t * frame_seconds
    wave: np.ndarray | None = None  # (N,) its 16 kHz audio, while its block is processed (for other embedders)


def window_frames(frames: int, window: int, hop: int, shortest: int) -> list[tuple[int, int]]:
    """(first, end) frames of the windows of a piece of `frames` frames: every `hop` frames, the last one
    flush with the end; a piece shorter than a window is one window when it has `shortest` frames."""
    if frames < shortest:
        return []
    if frames <= window:
        return [(0, frames)]
    starts = [*range(0, frames - window, hop), frames - window]
    return [(start, start + window) for start in starts]


class Windows(NamedTuple):
    spans: list[Span]  # (N,) each window's (start, end) in seconds
    embeddings: torch.Tensor  # (N, E) unit
    logits: torch.Tensor  # (N, C)


@torch.no_grad()
def embed_windows(model, pieces: list[Piece], settings: DiarizationSettings, config: FeatureConfig) -> Windows:
    """The windows of `pieces` and their unit embeddings and logits, in batches of similar length."""
    crops, spans = window_crops(pieces, settings, config.frame_seconds)
    if not crops:
        return Windows([], torch.zeros(0, 0), torch.zeros(0, 0))
    lengths = [len(c) for c in crops]
    embeddings, logits = [None] * len(crops), [None] * len(crops)
    model.eval()
    for batch in length_batches(lengths, BATCH_FRAMES):
        padded = torch.nn.utils.rnn.pad_sequence([crops[i] for i in batch], batch_first=True)  # (B, T, n_mels)
        raw = model.embed(padded, torch.tensor([lengths[i] for i in batch]))  # (B, E)
        for i, e, z in zip(batch, F.normalize(raw.float(), dim=-1), model.head(raw).float()):
            embeddings[i], logits[i] = e, z
    return Windows(spans, torch.stack(embeddings), torch.stack(logits))


def window_crops(pieces: list[Piece], settings: DiarizationSettings, step: float):
    """The windows of `pieces`: their (T_i, n_mels) features and (start, end) seconds; `step`: seconds a frame."""
    size, hop, shortest = (max(1, round(s / step)) for s in (settings.window, settings.hop, settings.min_window))
    crops, spans = [], []
    for piece in pieces:
        for first, end in window_frames(len(piece.features), size, hop, shortest):
            crops.append(piece.features[first:end])
            spans.append((piece.start + first * step, piece.start + end * step))
    return crops, spans


# -- the streaming pass --------------------------------------------------------------------------
@dataclass
class Gathered:
    """What one pass over the audio gathers: speech regions, windows (their embeddings and logits), and,
    when asked, every piece's features (for enrolling a speaker found in it)."""

    regions: list[Region] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    embeddings: list[torch.Tensor] = field(default_factory=list)  # (N_b, E) per block
    logits: list[torch.Tensor] = field(default_factory=list)
    pieces: list[Piece] | None = None
    seconds: float = 0.0  # audio read

    def windows(self) -> Windows:
        """All the windows gathered, in time order."""
        return Windows(self.spans, torch.cat(self.embeddings), torch.cat(self.logits))


def pieces_of(wave: np.ndarray, offset: float, regions: list[Region], max_piece: float,
              config: FeatureConfig) -> list[Piece]:
    """Regions (seconds from `offset`, the wave's start) -> their features, long ones cut into equal pieces."""
    pieces = []
    for start, end in regions:
        parts = max(1, math.ceil((end - start) / max_piece))
        edges = np.linspace(start, end, parts + 1)
        for a, b in zip(edges[:-1], edges[1:]):
            samples = wave[int(round(a * SAMPLE_RATE)): int(round(b * SAMPLE_RATE))]
            if len(samples) > config.n_fft // 2:
                pieces.append(Piece(offset + a, aligned_features(samples, config), samples))
    return pieces


class Speech(NamedTuple):
    """One block's speech: the audio searched (the block after the samples carried into it), where that
    audio starts, the regions complete in it (seconds from `start`), and the seconds of the file read so far."""
    wave: np.ndarray
    start: float
    regions: list[Region]
    seconds: float


def speech_of(blocks, activity: ActivitySettings):
    """(N,) 16 kHz blocks -> each block's Speech; a region still open at a block's end goes on in the next."""
    carry, carry_start, seconds = np.zeros(0, np.float32), 0.0, 0.0
    for last, block in flagged_last(blocks):
        wave = np.concatenate([carry, block]) if len(carry) else block
        seconds += len(block) / SAMPLE_RATE
        regions = speech_regions(wave, activity)
        carry, kept = split_open_region(wave, regions, last)
        yield Speech(wave, carry_start, kept, seconds)
        carry_start = seconds - len(carry) / SAMPLE_RATE


def one_ahead(items):
    """The items of an iterable, each next one made in a background thread while the caller works on this one:
    reading and speech activity (onnxruntime, which lets go of the GIL) run beside the embeddings on a second
    core. An error in the thread is raised here; at most one item waits."""
    iterator = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="one-ahead") as pool:
        pending = pool.submit(next, iterator, _END)
        while (item := pending.result()) is not _END:
            pending = pool.submit(next, iterator, _END)
            yield item


_END = object()


def gather(blocks, embedder: Callable[[list[Piece]], Windows], settings: DiarizationSettings, config: FeatureConfig,
           keep_pieces: bool = False, progress: Callable[[float], None] | None = None) -> Gathered:
    """One pass over (N,) 16 kHz blocks: speech regions (one block ahead, in a thread), windows,
    `embedder(pieces)`; `progress(seconds read)`."""
    gathered = Gathered(pieces=[] if keep_pieces else None)
    for speech in one_ahead(speech_of(blocks, settings.activity)):
        pieces = pieces_of(speech.wave, speech.start, speech.regions, settings.max_piece, config)
        windows = embedder(pieces)
        gathered.seconds = speech.seconds
        gathered.regions += [(speech.start + s, speech.start + e) for s, e in speech.regions]
        if windows.spans:
            gathered.spans += windows.spans
            gathered.embeddings.append(windows.embeddings)
            gathered.logits.append(windows.logits)
        if keep_pieces:
            gathered.pieces += [piece._replace(wave=None) for piece in pieces]
        del speech, pieces
        release_freed_memory()
        if progress:
            progress(gathered.seconds)
    gathered.regions = merge_touching(gathered.regions)
    return gathered


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None


def release_freed_memory() -> None:
    """Hand the heap's freed memory back to the system (glibc's malloc_trim). Each block's tensors differ in
    size, and glibc keeps what they freed: an hour's pass grew from 0.6 to 1.15 GB resident without this, and
    stayed near 0.67 GB with it; the command line's peak on 66 min fell from 1.45 to 1.02 GB, for about 10 %
    more CPU time (page faults after each trim)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def flagged_last(items):
    """(is_last, item) for each item of an iterable."""
    iterator = iter(items)
    try:
        previous = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield False, previous
        previous = item
    yield True, previous


def split_open_region(wave: np.ndarray, regions: list[Region], last: bool) -> tuple[np.ndarray, list[Region]]:
    """The samples to carry into the next block (a region that reaches the block's end, so may go on) and
    the regions that are complete."""
    end = len(wave) / SAMPLE_RATE
    if last or not regions or regions[-1][1] < end - 0.2 or end - regions[-1][0] > MAX_CARRY_SECONDS:
        return np.zeros(0, np.float32), regions
    return wave[int(regions[-1][0] * SAMPLE_RATE):], regions[:-1]


# -- clustering, segments, names -------------------------------------------------------------------
def cluster(embeddings: np.ndarray, spans: list[Span], settings: DiarizationSettings, count: Count) -> np.ndarray:
    """(N, E) unit window embeddings in time order -> (N,) speaker labels, as `settings` says."""
    if settings.centre and len(embeddings) > 1:
        embeddings = centred(embeddings, settings.centre)
    if settings.method == "spectral":
        labels = spectral(embeddings, count)
    else:
        labels = agglomerative(embeddings, settings.threshold, count)
    if settings.switch_penalty > 0:
        labels = resegment(embeddings, labels, settings.switch_penalty)
    if count.exact is None:  # a known count stands; else stray clusters are folded in
        share = min(1.0, settings.hop / settings.window)
        seconds = np.array([(end - start) * share for start, end in spans])
        labels = absorb_small(embeddings, labels, seconds, settings.min_speaker_seconds, keep=count.low)
    return labels


class Speaker(NamedTuple):
    name: str  # a known or enrolled speaker's name, or "unknown N"
    seconds: float  # speech attributed to them
    identification: Identification  # Recognizer.decide's answer for their mean embedding
    clips: list[torch.Tensor]  # (T, n_mels) features of their longest segments, to enroll from (when kept)

    @property
    def known(self) -> bool:
        return self.identification.best is not None


@dataclass
class Diarization:
    segments: list[Segment]  # in time order
    speakers: list[Speaker]  # in order of first appearance
    duration: float  # seconds of audio analysed
    notes: list[str] = field(default_factory=list)  # for the user: cut, settings used

    def speaker(self, name: str) -> Speaker | None:
        return next((s for s in self.speakers if s.name == name), None)


def name_speakers(recognizer: Recognizer, windows: Windows, labels: np.ndarray, seconds: list[float],
                  top_k: int = 3) -> list[Identification]:
    """Each label's answer by the rule of Identify: unit mean of its windows' embeddings, mean logits, at the
    largest calibrated gallery's threshold whatever the gallery's size: the smaller galleries' thresholds were
    measured on clips, and on clusters they named 10% of strangers' speech against 4%
    (bench/notes/2026-12-07-gallery-size.md)."""
    answers = []
    for label in range(int(labels.max()) + 1):
        chosen = torch.from_numpy(labels == label)
        embedding = F.normalize(windows.embeddings[chosen].mean(0), dim=-1)  # (E,)
        answers.append(recognizer.decide(embedding, windows.logits[chosen].mean(0), seconds[label], [], top_k,
                                         by_gallery_size=False))
    return answers


def merge_same_names(labels: np.ndarray, answers: list[Identification]) -> np.ndarray:
    """Labels whose clusters were named as the same known speaker become one label (first appearance order)."""
    first_label = {}
    mapped = []
    for label, answer in enumerate(answers):
        name = answer.best.name if answer.best is not None else f"\0{label}"
        mapped.append(first_label.setdefault(name, label))
    merged = np.array(mapped)[labels]
    order = {label: i for i, label in enumerate(dict.fromkeys(merged.tolist()))}
    return np.array([order[label] for label in merged.tolist()], dtype=np.int64)


def clips_of(pieces: list[Piece], spans: list[tuple[float, float]], step: float) -> list[torch.Tensor]:
    """(T, n_mels) features of the longest `MAX_CLIPS` spans, from the pieces that hold them."""
    clips = []
    for start, end in sorted(spans, key=lambda s: s[0] - s[1])[:MAX_CLIPS]:
        parts = [p.features[max(0, round((start - p.start) / step)): max(0, round((end - p.start) / step))]
                 for p in pieces if p.start < end and p.start + len(p.features) * step > start]
        parts = [part for part in parts if len(part)]
        if parts:
            clips.append(torch.cat(parts))
    return clips


# -- the whole chain -------------------------------------------------------------------------------
def diarize_blocks(blocks, recognizer: Recognizer, settings: DiarizationSettings, count: Count = Count(),
                   keep_clips: bool = False, progress: Callable[[float], None] | None = None) -> Diarization:
    """(N,) mono float32 blocks at 16 kHz, in order -> who speaks when; InputError when there is nothing to
    diarize. `keep_clips`: keep each speaker's longest segments' features (for enrolling them)."""
    count.check()
    embedder = functools.partial(embed_windows, recognizer.model, settings=settings, config=recognizer.features_config)
    gathered = gather(blocks, embedder, settings, recognizer.features_config, keep_clips, progress)
    return diarize_gathered(gathered, recognizer, settings, count)


def diarize_gathered(gathered: Gathered, recognizer: Recognizer, settings: DiarizationSettings,
                     count: Count = Count()) -> Diarization:
    """The steps after the pass over the audio: clustering, segments, names (speakers' clips when the pass
    kept its pieces)."""
    check_length(gathered.seconds)
    if not gathered.regions:
        raise InputError("no speech found: the recording is silent, or holds only noise or tones")
    if not gathered.spans:
        speech = sum(end - start for start, end in gathered.regions)
        raise InputError(f"too little speech to tell voices apart: {speech:.1f} s in pieces under "
                         f"{settings.min_window:g} s; give at least one stretch of {settings.min_window:g} s")
    windows = gathered.windows()
    labels = cluster(windows.embeddings.numpy(), windows.spans, settings, count)
    pieces, answers = named_pieces(recognizer, gathered.regions, windows, labels)
    merged = merge_same_names(labels, answers)
    if merged.max() < labels.max():  # two clusters are one known voice: name the joined cluster again
        pieces, answers = named_pieces(recognizer, gathered.regions, windows, merged)
    names = speaker_names(answers)
    segments = [Segment(start, end, names[label], score_of(answers[label])) for start, end, label in pieces]
    speakers = []
    for label, answer in enumerate(answers):
        spans = [(start, end) for start, end, owner in pieces if owner == label]
        clips = clips_of(gathered.pieces, spans, recognizer.features_config.frame_seconds) if gathered.pieces else []
        speakers.append(Speaker(names[label], sum(e - s for s, e in spans), answer, clips))
    return Diarization(segments, speakers, gathered.seconds)


def named_pieces(recognizer: Recognizer, regions: list[Region], windows: Windows, labels: np.ndarray):
    """(start, end, label) pieces of speech and each label's Identification."""
    pieces = label_speech(regions, windows.spans, labels.tolist())
    seconds = np.bincount([label for _, _, label in pieces], [e - s for s, e, _ in pieces],
                          minlength=int(labels.max()) + 1)
    return pieces, name_speakers(recognizer, windows, labels, seconds.tolist())


def speaker_names(answers: list[Identification]) -> list[str]:
    """The named speaker's name, else "unknown 1", "unknown 2", ... in order of first appearance."""
    names, unknown = [], 0
    for answer in answers:
        if answer.best is not None:
            names.append(answer.best.name)
        else:
            unknown += 1
            names.append(f"unknown {unknown}")
    return names


def score_of(answer: Identification) -> float:
    """The decision score against the speaker named (or, for an unknown one, the nearest candidate)."""
    best = answer.best or (answer.matches[0] if answer.matches else None)
    return float(best.score) if best is not None else float("nan")


def check_length(seconds: float) -> None:
    if seconds < MIN_SECONDS:
        raise InputError(f"the recording is too short to tell voices apart: {seconds:.2f} s; "
                         f"give at least {MIN_SECONDS:g} s")


def file_seconds(path: str | Path) -> float:
    """A file's duration from its header, before anything is decoded; InputError if it is not audio."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path.name}")
    try:
        info = sf.info(str(path))
    except Exception:  # soundfile raises several kinds; the name is what the user needs
        raise InputError(f"cannot decode {path.name}: not an audio file soundfile can read") from None
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0


def length_notes(seconds: float, max_seconds: float | None) -> list[str]:
    """What the user is told about a recording's length: it is cut at `max_seconds` (None: never)."""
    if max_seconds is not None and seconds > max_seconds:
        return [f"the recording lasts {clock(seconds)}; only its first {clock(max_seconds)} were diarized "
                f"(the command line, `python -m speaker_app.diarize`, takes any length)"]
    return []


def diarize_file(path: str | Path, recognizer: Recognizer, settings: DiarizationSettings | None = None,
                 count: Count = Count(), max_seconds: float | None = None, keep_clips: bool = False,
                 progress: Callable[[float, float], None] | None = None) -> Diarization:
    """An audio file, read block by block (at most `max_seconds` of it) -> who speaks when.
    `progress(seconds done, seconds in all)`."""
    seconds = file_seconds(path)
    check_length(seconds)
    notes = length_notes(seconds, max_seconds)
    total = min(seconds, max_seconds or seconds)
    settings, how = settings_and_note(recognizer, settings)
    blocks = audio_blocks(path, SAMPLE_RATE, max_seconds, BLOCK_SECONDS)
    try:
        result = diarize_blocks(blocks, recognizer, settings, count, keep_clips,
                                progress and (lambda done: progress(min(done, total), total)))
    except AudioError as error:
        raise InputError(str(error)) from None
    result.notes = notes + result.notes + ([how] if how else [])
    return result


def diarize_wave(wave: np.ndarray, rate: int, recognizer: Recognizer, settings: DiarizationSettings | None = None,
                 count: Count = Count(), keep_clips: bool = False) -> Diarization:
    """An in-memory (N,) or (N, C) signal at `rate` -> who speaks when."""
    try:
        mono = to_mono(wave, rate, SAMPLE_RATE)
    except AudioError as error:
        raise InputError(str(error)) from None
    check_length(len(mono) / SAMPLE_RATE)
    settings, how = settings_and_note(recognizer, settings)
    size = int(BLOCK_SECONDS * SAMPLE_RATE)
    blocks = (mono[i: i + size] for i in range(0, len(mono), size))
    result = diarize_blocks(blocks, recognizer, settings, count, keep_clips)
    result.notes += [how] if how else []
    return result


def settings_and_note(recognizer: Recognizer, settings: DiarizationSettings | None):
    """The settings given, or those stored for the recognizer's model with a note when they are not its own."""
    if settings is not None:
        return settings, ""
    stored, how = stored_settings(recognizer.fingerprint)
    return stored, "" if how.startswith("calibrated for this model") else f"diarization settings: {how}"


# -- the command line ------------------------------------------------------------------------------
def table(segments: list[Segment]) -> str:
    """A plain-text table of segments: start, end, speaker, score."""
    rows = [("start", "end", "speaker", "score")]
    rows += [(clock(s.start), clock(s.end), s.speaker, "" if math.isnan(s.score) else f"{s.score:.3f}")
             for s in segments]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def diarize_with_bar(path: Path, recognizer: Recognizer, settings, count: Count, tqdm) -> Diarization:
    """diarize_file with a progress bar in seconds of audio on standard error."""
    with tqdm(total=round(file_seconds(path)), unit="s", desc=path.name, leave=False, file=sys.stderr,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s of audio [{elapsed}<{remaining}]") as bar:
        def progress(done, total):
            bar.total = round(total)
            bar.n = round(done)
            bar.refresh()

        return diarize_file(path, recognizer, settings, count, progress=progress)


def parse_count(parser: argparse.ArgumentParser, args) -> Count:
    if args.num_speakers is not None and (args.min_speakers is not None or args.max_speakers is not None):
        parser.error("give --num-speakers, or --min-speakers and/or --max-speakers, not both")
    try:
        return Count(args.num_speakers, args.min_speakers or 1, args.max_speakers or Count().high).check()
    except ValueError as error:
        parser.error(str(error))


def main(argv=None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="python -m speaker_app.diarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", nargs="+", type=Path, help="recordings (wav, flac, ogg, mp3; any rate and length)")
    parser.add_argument("--rttm-dir", required=True, type=Path, help="writes DIR/<audio file stem>.rttm")
    parser.add_argument("--checkpoint", type=Path, default=Path(__file__).resolve().parents[1] / "checkpoints" / "default.pt")
    parser.add_argument("--gallery", type=Path, help="a gallery file of enrolled speakers (the app's <fingerprint>.json)")
    parser.add_argument("--num-speakers", type=int, help="the number of speakers, when known")
    parser.add_argument("--min-speakers", type=int)
    parser.add_argument("--max-speakers", type=int)
    parser.add_argument("--settings", type=Path, help="a JSON file of DiarizationSettings (default: the calibrated ones)")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=max(1, cores // 2),
                        help="threads the model computes with (default: half the cores, as the app; %(default)s here)")
    args = parser.parse_args(argv)
    count = parse_count(parser, args)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        recognizer = Recognizer.from_checkpoint(args.checkpoint, args.gallery)
        settings = DiarizationSettings.from_dict(json.loads(args.settings.read_text())) if args.settings else None
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    args.rttm_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.audio:
        try:
            result = diarize_with_bar(path, recognizer, settings, count, tqdm)
        except InputError as error:
            print(f"{path}: {error}", file=sys.stderr)
            failed += 1
            continue
        rttm = write_rttm(result.segments, path.stem, args.rttm_dir / f"{path.stem}.rttm")
        print(f"{path}: {len(result.speakers)} speaker(s) in {clock(result.duration)}; wrote {rttm}")
        for note in result.notes:
            print(f"note: {note}")
        print(table(result.segments))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
