"""Is it speech? A check on (T, n_mels) log-mel features, before any speaker is named.

Speech changes over time and changes smoothly. Two measures say so:

- energy modulation: the standard deviation over frames of the frame's log
  energy (log-sum-exp over the mel bins), in nats. Syllables make speech rise
  and fall; a steady tone, hum, hiss or a constant tensor stays level.
- continuity: the correlation between consecutive frames' deviations from the
  clip's mean spectrum, pooled over bins. Overlapping 25 ms windows every 10 ms
  make real spectra move smoothly; independent random frames give about 0 and
  white noise about 0.16.

Measured with `python -m bench.speech_check` (bench/RESULTS.md): no clip of the
real speakers in ../shared/speech falls under these limits. What does fall under
them there are 8 asterisk prompts that hold no speech: 7 `silence` recordings and a
two-tone beep. A 1 kHz sine, white noise, and a constant or random (T, 40) tensor are
all refused.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

MIN_ENERGY_MODULATION = 0.2  # nats; real speech: 0.7 or more; sine 0.0, white noise 0.1
MIN_CONTINUITY = 0.2  # real speech: 0.38 or more (a 0.2 s digit); random features about 0, white noise 0.16


class SpeechCheck(NamedTuple):
    speech: bool
    energy_modulation: float
    continuity: float
    reason: str  # why it is not speech, for the user; "" when it is


def energy_modulation(features: torch.Tensor) -> float:
    """(T, F) log-mel -> standard deviation over time of the frame log energy."""
    if len(features) < 2:
        return 0.0
    return float(torch.logsumexp(features.double(), dim=1).std())


def continuity(features: torch.Tensor) -> float:
    """(T, F) log-mel -> correlation of consecutive frames' deviations from the mean spectrum."""
    if len(features) < 2:
        return 0.0
    deviation = features.double() - features.double().mean(0)
    before, after = deviation[:-1], deviation[1:]
    norm = (before.pow(2).sum() * after.pow(2).sum()).sqrt()
    return float((before * after).sum() / norm) if norm > 1e-12 else 0.0


def check_speech(features: torch.Tensor) -> SpeechCheck:
    """(T, F) log-mel features -> whether they look like speech, with the measures and a reason."""
    modulation, smooth = energy_modulation(features), continuity(features)
    if modulation < MIN_ENERGY_MODULATION:
        reason = (f"the sound stays level instead of rising and falling like speech (a steady tone, hum, hiss "
                  f"or constant features: energy varies by {modulation:.2f}, speech by {MIN_ENERGY_MODULATION} "
                  f"or more)")
    elif smooth < MIN_CONTINUITY:
        reason = (f"its spectrum jumps from frame to frame instead of moving smoothly like speech (noise or random "
                  f"features: frame-to-frame correlation {smooth:.2f}, speech {MIN_CONTINUITY} or more)")
    else:
        reason = ""
    return SpeechCheck(not reason, modulation, smooth, reason)
