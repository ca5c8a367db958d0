"""Where is speech? Voice activity detection for diarization: wave -> speech regions, in seconds.

Two detectors with one signature, so a benchmark can swap them (bench/RESULTS.md, "Who speaks when"):

- `silero_regions`: Silero VAD (the `silero-vad` package; its ONNX model ships in the wheel, nothing is
  downloaded), run as the package's "sequence" model: one onnxruntime call per 16 s of audio instead of
  a Python step every 32 ms, the same probabilities ten times faster.
- `energy_regions`: the features' own silence rule (sox's `silence ... 1%` on the peak-normalised signal:
  a 20 ms RMS over 1 % of full scale, runs of at least 0.1 s), as intervals. Nearly free, but any noise
  louder than -40 dBFS counts as speech.

Both take a mono float32 signal at 16 kHz and return sorted, disjoint (start, end) pairs in seconds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16000  # both detectors work at 16 kHz (Silero's model also takes 8 kHz; the features use 16)
Region = tuple[float, float]  # (start, end) in seconds
DETECTORS = ("silero", "energy")


@dataclass(frozen=True)
class ActivitySettings:
    detector: str = "silero"  # "silero" or "energy"
    threshold: float = 0.5  # Silero's speech probability (its default)
    energy_threshold: float = 0.01  # energy: RMS as a fraction of full scale (the features' sox `1%`)
    min_speech: float = 0.25  # seconds: shorter bursts are dropped (Silero's default)
    min_silence: float = 0.1  # seconds: shorter pauses do not split a region (Silero's default)
    pad: float = 0.03  # seconds added to each side of a region (Silero's default)

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if not (0 < self.threshold < 1 and 0 < self.energy_threshold < 1):
            raise ValueError(f"thresholds must be in (0, 1), got {self.threshold} and {self.energy_threshold}")
        if min(self.min_speech, self.min_silence, self.pad) < 0:
            raise ValueError(f"durations must not be negative: {self}")


@functools.lru_cache(maxsize=1)
def silero():
    """(Silero's sequence model, its probabilities-to-timestamps function), loaded once per process from the
    package's wheel; the model runs in onnxruntime on one thread."""
    threads = torch.get_num_threads()
    import silero_vad  # importing it sets torch's threads to 1 for the whole process: put them back

    torch.set_num_threads(threads)
    return silero_vad.load_silero_vad(sequence=True), silero_vad.get_speech_timestamps_from_probs


def silero_regions(wave: np.ndarray, settings: ActivitySettings = ActivitySettings()) -> list[Region]:
    """(N,) mono float32 at 16 kHz -> speech regions in seconds, by Silero VAD."""
    if len(wave) < 512:  # under one 32 ms frame: nothing to decide on
        return []
    model, timestamps = silero()
    probabilities = model.audio_forward(np.ascontiguousarray(wave, dtype=np.float32), SAMPLE_RATE)
    found = timestamps(
        probabilities, SAMPLE_RATE, threshold=settings.threshold, min_speech_duration_ms=settings.min_speech * 1000,
        min_silence_duration_ms=settings.min_silence * 1000, speech_pad_ms=settings.pad * 1000,
        audio_length_samples=len(wave))
    return [(item["start"] / SAMPLE_RATE, item["end"] / SAMPLE_RATE) for item in found]


def energy_regions(wave: np.ndarray, settings: ActivitySettings = ActivitySettings()) -> list[Region]:
    """(N,) mono float32 at 16 kHz -> regions whose 20 ms RMS, after peak normalisation to -3 dBFS, is over
    `energy_threshold` of full scale (features.remove_silence's rule as intervals, at a 10 ms step)."""
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    if peak == 0.0:
        return []
    step, window = SAMPLE_RATE // 100, SAMPLE_RATE // 50
    energy = np.concatenate([[0.0], np.cumsum((wave.astype(np.float64) * (10 ** (-3 / 20) / peak)) ** 2)])
    ends = np.minimum(np.arange(step, len(wave) + step, step), len(wave))  # (frames,) each frame's last sample
    power = (energy[ends] - energy[np.maximum(ends - window, 0)]) / window
    return frames_to_regions(np.sqrt(power) > settings.energy_threshold, step / SAMPLE_RATE, settings)


def frames_to_regions(flags: np.ndarray, frame_seconds: float, settings: ActivitySettings) -> list[Region]:
    """(T,) booleans -> regions: pauses under min_silence joined, bursts under min_speech dropped, padded."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    runs = [[float(start * frame_seconds), float(end * frame_seconds)] for start, end in zip(edges[::2], edges[1::2])]
    joined = []
    for run in runs:
        if joined and run[0] - joined[-1][1] < settings.min_silence:
            joined[-1][1] = run[1]
        else:
            joined.append(run)
    duration = len(flags) * frame_seconds
    kept = [(max(0.0, s - settings.pad), min(duration, e + settings.pad)) for s, e in joined
            if e - s >= settings.min_speech]
    return merge_touching(kept)


def merge_touching(regions: list[Region]) -> list[Region]:
    """Sorted regions with overlapping or touching ones joined."""
    merged = []
    for start, end in sorted(regions):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def speech_regions(wave: np.ndarray, settings: ActivitySettings = ActivitySettings()) -> list[Region]:
    """The detector `settings.detector` names."""
    return (silero_regions if settings.detector == "silero" else energy_regions)(wave, settings)
