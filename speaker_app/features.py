"""One feature pipeline for training and inference: audio -> (T, 40) log-mel.

It reproduces the course data set's features: downmix to mono, resample to
16 kHz, peak-normalise to -3 dBFS, remove silence the way sox's
`silence 1 0.1 1% -1 0.1 1%` does, then a 40-bin HTK mel spectrogram and a
natural log floored at 1e-9. Every parameter lives in `FeatureConfig`, which
each checkpoint stores, so nothing downstream restates them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio

from .configs import from_dict

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au")


# Natural-log mel power, as `log_mel` makes it, lies between log(log_floor) = -20.7 and about 9
# for any signal peak-normalised to -3 dBFS (a full-scale square wave; white noise reaches 5). The
# bounds leave room for other floors and gains; values past them (1e20, or dB instead of
# natural log) are no log-mel energies, and overflow the model's arithmetic.
LOG_MEL_RANGE = (-50.0, 50.0)


class AudioError(ValueError):
    """Audio that cannot be turned into features (corrupt, unsupported, silent, too short)."""


class FeatureError(ValueError):
    """A feature tensor that is not (T, n_mels) finite log-mel values; the message names it."""


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 50.0
    f_max: float | None = None
    n_mels: int = 40
    norm_db: float = -3.0  # peak level after normalisation (sox `norm -3`)
    silence_threshold: float = 0.01  # RMS as a fraction of full scale (sox `1%`)
    silence_duration: float = 0.1  # seconds (sox `0.1`)
    log_floor: float = 1e-9

    def __post_init__(self):
        if self.sample_rate <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError(f"sample_rate, hop_length and n_mels must be positive: {self}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) exceeds n_fft ({self.n_fft})")

    @property
    def frame_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureConfig:
        return from_dict(cls, data)


def read_audio(path: str | Path, sample_rate: int, max_seconds: float | None = None,
               block_seconds: float = 10.0) -> np.ndarray:
    """Decode a file to mono float32 at `sample_rate`, block by block.

    Memory stays bounded by the output (16 kHz mono) whatever the file's own
    rate and channel count; `max_seconds` stops reading after that much audio.
    """
    pieces = list(audio_blocks(path, sample_rate, max_seconds, block_seconds))
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)


def audio_blocks(path: str | Path, sample_rate: int, max_seconds: float | None = None,
                 block_seconds: float = 10.0):
    """Yield a file's audio as consecutive (N,) mono float32 blocks at `sample_rate`, about `block_seconds`
    each (the resampler's delay makes them a little uneven), so that an hour never sits in memory at once."""
    path = Path(path)
    try:
        info = sf.info(str(path))
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError
        raise AudioError(f"cannot decode {path.name}: {decode_reason(error, path)}") from None
    if info.frames == 0 or info.samplerate <= 0:
        raise AudioError(f"{path.name} holds no audio")
    limit = None if max_seconds is None else int(max_seconds * info.samplerate)
    block = max(1, int(block_seconds * info.samplerate))
    resampler = None
    if info.samplerate != sample_rate:
        resampler = soxr.ResampleStream(info.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
    try:
        for chunk in sf.blocks(str(path), blocksize=block, frames=limit if limit else -1,
                               dtype="float32", always_2d=True):
            mono = chunk.mean(axis=1)  # sox `channels 1` averages the channels
            yield resampler.resample_chunk(mono) if resampler else mono
    except Exception as error:
        raise AudioError(f"cannot decode {path.name}: {decode_reason(error, path)}") from None
    if resampler:
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def decode_reason(error: Exception, path: Path) -> str:
    """soundfile's message without the file's full path: the user knows the name, not the server's folders."""
    return str(error).replace(f"Error opening {str(path)!r}: ", "")


def to_mono(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """An in-memory signal of shape (N,) or (N, C), any dtype, to mono float32 at `sample_rate`."""
    wave = np.asarray(wave)
    if wave.ndim not in (1, 2):
        raise AudioError(f"audio must be (samples,) or (samples, channels), got shape {wave.shape}")
    if np.issubdtype(wave.dtype, np.integer):
        wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    wave = wave.astype(np.float32, copy=False)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if not np.isfinite(wave).all():
        raise AudioError("audio contains NaN or infinite samples")
    if rate != sample_rate and wave.size:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return wave


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play `wave` `factor` times faster, tempo and pitch together (sox `speed`): resampled as if
    it had been recorded at `factor * sample_rate`."""
    return soxr.resample(wave, factor * sample_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)


def peak_normalise(wave: np.ndarray, level_db: float) -> np.ndarray:
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak == 0.0:
        return wave
    return wave * np.float32(10 ** (level_db / 20) / peak)


def remove_silence(wave: np.ndarray, sample_rate: int, threshold: float = 0.01,
                   duration: float = 0.1) -> np.ndarray:
    """sox `silence 1 D T -1 D T` on a mono signal.

    sox keeps a running RMS over the last rate/50 samples, its window cleared to
    zeros at the start and on every restart. It drops audio until D seconds in a
    row are above T, copies until D seconds in a row are below T (shorter pauses
    are kept), drops that pause and starts over. Runs are found on flags computed
    once; only the first window after a restart is recomputed.
    """
    n = len(wave)
    window = max(1, sample_rate // 50)
    need = max(1, int(duration * sample_rate + 0.5))
    energy = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])

    def loud(begin: int, end: int, origin: int) -> np.ndarray:
        """Above-threshold flags of samples begin..end-1, the RMS window cleared at `origin`."""
        index = np.arange(begin, end)
        first = np.maximum(index - window + 1, origin)
        return np.sqrt((energy[index + 1] - energy[first]) / window) > threshold

    def run_starts(flags: np.ndarray, value: bool) -> np.ndarray:
        """Indices where `need` flags in a row equal `value`."""
        if len(flags) < need:
            return np.zeros(0, dtype=np.int64)
        counts = np.concatenate([[0], np.cumsum(flags == value)])
        return np.flatnonzero(counts[need:] - counts[:-need] == need)

    steady = loud(0, n, 0)  # flags once the window holds only real samples
    starts = {value: run_starts(steady, value) for value in (True, False)}

    def find(value: bool, begin: int, origin: int) -> int | None:
        settled = origin + window - 1  # from here on the cleared window no longer matters
        if begin < settled:
            end = min(n, settled + need)
            local = run_starts(loud(begin, end, origin), value)
            local = local[local + begin < settled]
            if local.size:
                return begin + int(local[0])
        later = starts[value]
        at = np.searchsorted(later, max(begin, settled))
        return int(later[at]) if at < len(later) else None

    kept, position = [], 0
    while position < n:
        start = find(True, position, position)
        if start is None:
            break  # the rest never stays D seconds above T: sox drops it
        pause = find(False, start + need, position)
        if pause is None:
            kept.append(wave[start:])
            break
        kept.append(wave[start:pause])
        position = pause + need  # sox restarts here with a cleared window
    return np.concatenate(kept) if kept else np.zeros(0, dtype=wave.dtype)


@functools.lru_cache(maxsize=8)
def _mel_transform(config: FeatureConfig) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=config.sample_rate, n_fft=config.n_fft, win_length=config.win_length,
        hop_length=config.hop_length, f_min=config.f_min, f_max=config.f_max,
        n_mels=config.n_mels, power=2.0, center=True, pad_mode="reflect",
        mel_scale="htk", norm=None,
    )


def log_mel(wave: np.ndarray | torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """Mono signal at config.sample_rate -> (T, n_mels) float32 natural-log mel energies."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    with torch.no_grad():
        mel = _mel_transform(config)(wave)  # (n_mels, T)
    return torch.log(torch.clamp(mel, min=config.log_floor)).T.contiguous()


def features_from_wave(wave: np.ndarray, config: FeatureConfig, name: str = "audio") -> torch.Tensor:
    """Mono float32 at config.sample_rate -> normalised, silence-trimmed (T, n_mels) features."""
    wave = peak_normalise(wave, config.norm_db)
    speech = remove_silence(wave, config.sample_rate, config.silence_threshold, config.silence_duration)
    if len(speech) < config.n_fft // 2 + 1:  # reflect padding needs half a window
        raise AudioError(f"{name}: no speech found (silent, or under {config.silence_duration:g} s above the silence threshold)")
    return log_mel(speech, config)


def aligned_features(wave: np.ndarray, config: FeatureConfig) -> torch.Tensor:
    """One stretch of speech (mono float32 at config.sample_rate) -> (T, n_mels) features that keep its time:
    frame t is centred on sample t * hop_length. `features_from_wave` without the silence removal, for
    pipelines that need timing (diarization computes them on each speech region a voice activity detector
    found); on speech the silence rule keeps whole, the two are the same."""
    if len(wave) < config.n_fft // 2 + 1:  # reflect padding needs half a window
        raise AudioError(f"a stretch of {len(wave)} samples is too short for features: at least "
                         f"{config.n_fft // 2 + 1} are needed")
    return log_mel(peak_normalise(wave, config.norm_db), config)


def features_from_file(path: str | Path, config: FeatureConfig, max_seconds: float | None = None) -> torch.Tensor:
    wave = read_audio(path, config.sample_rate, max_seconds)
    return features_from_wave(wave, config, Path(path).name)


def features_from_array(wave: np.ndarray, rate: int, config: FeatureConfig) -> torch.Tensor:
    return features_from_wave(to_mono(wave, rate, config.sample_rate), config)


def check_features(features, n_mels: int, name: str = "features", max_frames: int | None = None) -> torch.Tensor:
    """A loaded object -> (T, n_mels) float32 log-mel features, or FeatureError saying what is wrong.

    Checks, in order (cheapest first, none allocating a copy of a large input): a tensor; 2-D with
    n_mels columns (with a hint when it looks transposed); at most max_frames rows; floating point;
    finite; within LOG_MEL_RANGE.
    """
    expected = f"expected a (T, {n_mels}) tensor"
    if not isinstance(features, torch.Tensor):
        raise FeatureError(f"{name} must hold a tensor: {expected}, got {type(features).__name__}")
    shape = tuple(features.shape)
    if features.dim() != 2 or shape[1] != n_mels:
        if features.dim() == 2 and shape[0] == n_mels:
            raise FeatureError(f"{name}: {expected}, got {shape} (it looks transposed): "
                               f"2-D, {n_mels} mel bins per frame; save features.T")
        raise FeatureError(f"{name}: {expected}, got {shape}: 2-D, {n_mels} mel bins per frame")
    if max_frames is not None and shape[0] > max_frames:
        raise FeatureError(f"{name} holds {shape[0]:,} frames, over the {max_frames:,} allowed")
    if not features.dtype.is_floating_point:
        raise FeatureError(f"{name}: expected floating-point log-mel values, got {features.dtype}")
    features = features.float()
    if not torch.isfinite(features).all():
        raise FeatureError(f"{name} contains NaN or infinite values")
    low, high = LOG_MEL_RANGE
    smallest, largest = (float(features.min()), float(features.max())) if features.numel() else (0.0, 0.0)
    if smallest < low or largest > high:
        raise FeatureError(f"{name} holds values from {smallest:.3g} to {largest:.3g}: log-mel energies (natural log "
                           f"of mel power) lie within [{low:g}, {high:g}]")
    return features


def seconds(frames: int, config: FeatureConfig) -> float:
    return frames * config.frame_seconds


def frames_for(duration: float, config: FeatureConfig) -> int:
    return int(math.ceil(duration / config.frame_seconds))
