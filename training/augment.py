"""Augmentation of log-mel batches, on whatever device the batch is on.

Works in the feature domain so it applies to the course data as well as to
prepared audio folders:
- reverberation: each filter's power smeared over time by an exponentially
  decaying tail (a random reverberation time and direct-to-reverberant ratio),
  the spectral-domain approximation of a room impulse response;
- babble: another crop of the batch mixed in at a random SNR, an interfering
  talker (MUSAN's babble, made from the training speech itself);
- band-limiting: a 16 kHz clip made to look like 8 kHz telephony (filters
  above 4 kHz emptied), so a model cannot tell sources apart by bandwidth;
- additive white noise at a random SNR, added in the power domain;
- SpecAugment frequency and time masks (Park et al. 2019);
- shortening: a crop cut to a random shorter length, so that a short clip
  (a word) is no cue to a speaker whose clips are all short;
- speaker augmentation: a crop's spectrum scaled in frequency (its pitch and
  formants, as speed perturbation scales them) and labelled as a new speaker,
  one per speaker and factor (Yamamoto et al. 2019; WeSpeaker's speed
  perturbation). It runs first, in `Augmenter.new_speakers`, since it changes
  the labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchaudio

from speaker_app.features import FeatureConfig


@dataclass(frozen=True)
class AugmentConfig:
    bandlimit_prob: float = 0.3
    bandlimit_hz: float = 4000.0
    noise_prob: float = 0.3
    snr_db: tuple[float, float] = (5.0, 30.0)
    freq_masks: int = 2
    freq_width: int = 5  # mel bins, at most
    time_masks: int = 2
    time_width: int = 20  # frames, at most
    # chance that a crop is cut to a length drawn evenly from [short_frames, its own]. Off: on the 31 speakers'
    # full recipe it lowered EER and minDCF but not top-1 errors (bench/notes/2026-12-03-full-recipe-what-else.md)
    short_prob: float = 0.0
    short_frames: int = 30
    # reverberation and babble: off. On the default recipe (two runs) they lowered new voices' mean top-1 on both
    # halves of the development speakers (bench/notes/2026-12-06-reverberation-and-babble.md)
    reverb_prob: float = 0.0
    rt60_s: tuple[float, float] = (0.2, 0.8)  # reverberation time: 60 dB of decay
    drr_db: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant power ratio
    babble_prob: float = 0.0
    babble_snr_db: tuple[float, float] = (10.0, 20.0)
    # speaker augmentation: off until measured. The chance that a crop is warped, and the frequency factors; a
    # crop warped by factors[j] belongs to pseudo-speaker (j + 1) * n_speakers + its speaker
    warp_prob: float = 0.0
    warp_factors: tuple[float, ...] = (0.9, 1.1)

    def to_dict(self) -> dict:
        return asdict(self)


def frequency_warp(features: FeatureConfig, factor: float) -> torch.Tensor:
    """(n_mels, n_mels) matrix W: log-mel x -> x @ W.T, the spectrum scaled in frequency by `factor` (what was
    at f is now at factor * f). Each output filter takes the input at its centre frequency / factor, linearly
    interpolated between the input filters' centres; beyond the first or last centre, that filter."""
    if factor <= 0:
        raise ValueError(f"a warp factor must be positive, got {factor}")

    def mel(hz):  # the HTK scale, as the features'
        return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)

    f_max = features.f_max or features.sample_rate / 2
    centres = np.linspace(mel(features.f_min), mel(f_max), features.n_mels + 2)[1:-1]
    hz = 700.0 * (10 ** (centres / 2595.0) - 1.0)
    # the fractional input filter each output filter reads from
    position = torch.from_numpy(np.interp(mel(hz / factor), centres, np.arange(features.n_mels)))
    low = position.floor().long().clamp(max=features.n_mels - 2)
    share = (position - low).clamp(0.0, 1.0)
    warp = torch.zeros(features.n_mels, features.n_mels, dtype=torch.float64)
    rows = torch.arange(features.n_mels)
    warp[rows, low] = 1.0 - share
    warp[rows, low + 1] += share
    return warp.float()


def mean_power(power: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, T, F) power, zero where padded, and its (B, T, 1) mask of real frames -> (B,) mean power per real bin."""
    return power.sum((1, 2)) / (real.sum((1, 2)) * power.shape[2])


class Augmenter:
    """Augments rank `rank`'s slice of a global batch split over `world` processes. Random numbers
    are drawn for the whole global batch and sliced, so the global batch is augmented the same at
    any number of processes. All work after the draws stays on the batch's device."""

    def __init__(self, config: AugmentConfig, features: FeatureConfig, rank: int = 0, world: int = 1,
                 n_speakers: int = 0):
        if not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        if config.warp_prob > 0 and n_speakers < 1:
            raise ValueError("speaker augmentation (warp_prob > 0) needs the number of speakers")
        self.config = config
        self.n_speakers = n_speakers
        self.warps = torch.stack([frequency_warp(features, factor) for factor in config.warp_factors]) \
            if config.warp_factors else torch.zeros(0, features.n_mels, features.n_mels)
        self.rank, self.world = rank, world
        self.floor = features.log_floor
        self.frame_s = features.frame_seconds
        bank = torchaudio.functional.melscale_fbanks(  # (n_freqs, n_mels), the pipeline's own filters
            features.n_fft // 2 + 1, features.f_min, features.f_max or features.sample_rate / 2,
            features.n_mels, features.sample_rate, None, "htk")
        freqs = torch.linspace(0, features.sample_rate / 2, bank.shape[0])
        area = bank.sum(0)
        self.kept = (bank * (freqs < config.bandlimit_hz)[:, None]).sum(0) / area  # share of each filter kept
        self.white = area / area.mean()  # white noise power per filter

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator):
        """x (B, T, n_mels) log-mel, padded, and its lengths (B,) -> an augmented copy and its lengths."""
        B, T, _ = x.shape
        c = self.config
        if c.short_prob > 0:  # first: everything below works on the shortened lengths
            pick = self._chance(B, c.short_prob, generator, x.device)
            low = lengths.clamp(max=c.short_frames)
            drawn = low + (self._uniform(B, generator, x.device) * (lengths - low + 1)).long().minimum(lengths - low)
            lengths = torch.where(pick, drawn, lengths)
        real = (torch.arange(T, device=x.device)[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
        power = x.exp() * real
        if c.reverb_prob > 0:
            power = self._reverb(power, real, generator)
        if c.babble_prob > 0:
            power = self._babble(power, real, generator)
        if c.noise_prob > 0:
            pick = self._chance(B, c.noise_prob, generator, x.device)
            snr = self._between(B, c.snr_db, generator, x.device)
            noise = (mean_power(power, real) * 10 ** (-snr / 10) * pick)[:, None, None] * self.white.to(x.device)
            power = power + noise
        if c.bandlimit_prob > 0:
            pick = self._chance(B, c.bandlimit_prob, generator, x.device)
            power = torch.where(pick[:, None, None], power * self.kept.to(x.device), power)
        x = torch.log(power.clamp(min=self.floor)).masked_fill(~real, 0.0)
        return self._mask(x, real, lengths, generator), lengths

    def new_speakers(self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        """x (B, T, n_mels) log-mel and labels (B,) -> chosen rows warped in frequency, with their pseudo-speakers'
        labels. Draws nothing when speaker augmentation is off, so the other augmentations' draws stay the same."""
        c = self.config
        if c.warp_prob <= 0:
            return x, labels
        B = x.shape[0]
        pick = self._chance(B, c.warp_prob, generator, x.device)
        n = len(c.warp_factors)
        which = (self._uniform(B, generator, x.device) * n).long().clamp(max=n - 1)
        warped = torch.einsum("btf,bgf->btg", x, self.warps.to(x)[which])  # row b: x[b] @ warps[which[b]].T
        x = torch.where(pick[:, None, None], warped, x)
        return x, torch.where(pick, labels + (which + 1) * self.n_speakers, labels)

    def _reverb(self, power, real, generator):
        """(B, T, F) power -> each chosen row convolved in time with 1 (direct) plus a decaying tail."""
        B, T, _ = power.shape
        c = self.config
        pick = self._chance(B, c.reverb_prob, generator, power.device)
        rt60 = self._between(B, c.rt60_s, generator, power.device)
        drr = self._between(B, c.drr_db, generator, power.device)
        taps = int(c.rt60_s[1] / self.frame_s)  # 60 dB down at the longest reverberation time
        k = torch.arange(1, taps + 1, device=power.device)
        tail = 10 ** (-6 * k[None, :] * self.frame_s / rt60[:, None])  # (B, taps): -60 dB at rt60
        tail = tail / tail.sum(1, keepdim=True) * 10 ** (-drr[:, None] / 10) * pick[:, None]
        kernel = torch.cat([torch.ones(B, 1, device=power.device), tail], 1)  # (B, 1 + taps)
        n = T + taps + 1  # float64: powers span many decades, and float32 round-off would swamp the quiet ones
        spectrum = torch.fft.rfft(power.double(), n, dim=1) * torch.fft.rfft(kernel.double(), n, dim=1)[:, :, None]
        smeared = torch.fft.irfft(spectrum, n, dim=1)[:, :T].to(power.dtype)
        return torch.maximum(smeared, power) * real  # never below the direct sound

    def _babble(self, power, real, generator):
        """(B, T, F) power -> chosen rows with their neighbour row (pairs 0-1, 2-3, ...) mixed in at a random SNR.
        Pairs are the global batch's when each process holds an even number of rows; an odd last row is left alone."""
        B = power.shape[0]
        c = self.config
        rows = torch.arange(B, device=power.device)
        partner = torch.where(rows ^ 1 < B, rows ^ 1, rows)
        pick = self._chance(B, c.babble_prob, generator, power.device) & (partner != rows)
        snr = self._between(B, c.babble_snr_db, generator, power.device)
        level = mean_power(power, real)
        gain = level / level[partner].clamp(min=self.floor) * 10 ** (-snr / 10) * pick
        return power + gain[:, None, None] * power[partner] * real

    def _between(self, n, bounds, generator, device):
        low, high = bounds
        return low + (high - low) * self._uniform(n, generator, device)

    def _mask(self, x, real, lengths, generator):
        """SpecAugment masks, filled with each utterance's mean so that CMN leaves them at zero."""
        B, T, F = x.shape
        c = self.config
        mean = (x * real).sum(1, keepdim=True) / lengths[:, None, None].to(x.dtype)  # (B, 1, F)
        hide = torch.zeros(B, T, F, dtype=torch.bool, device=x.device)
        for _ in range(c.freq_masks):
            hide |= self._band(B, F, c.freq_width, torch.full((B,), F, device=x.device), generator)[:, None, :]
        for _ in range(c.time_masks):
            hide |= self._band(B, T, c.time_width, lengths, generator)[:, :, None]
        return torch.where(hide & real, mean, x)

    def _uniform(self, n, generator, device):
        """n uniform numbers in [0, 1) for this rank's rows, from a draw for the global batch."""
        draw = torch.rand(n * self.world, generator=generator)
        return draw[self.rank * n:(self.rank + 1) * n].to(device, non_blocking=True)

    def _chance(self, n, p, generator, device):
        return self._uniform(n, generator, device) < p

    def _band(self, n, size, max_width, limits, generator):
        """(n, size) bool: one random band of width 0..max_width per row, inside [0, limit)."""
        width = (self._uniform(n, generator, limits.device) * (max_width + 1)).long().minimum(limits // 4)
        start = (self._uniform(n, generator, limits.device) * (limits - width + 1)).long()
        index = torch.arange(size, device=limits.device)
        return (index >= start[:, None]) & (index < (start + width)[:, None])
