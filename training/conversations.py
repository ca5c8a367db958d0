"""Synthetic conversations with a known answer: who speaks when, built from single-speaker clips.

The diarization benchmark (bench/diarization.py) and its test (tests/test_diarize.py) build them the same way,
seeded, so the same arguments give the same audio and the same reference:

1. Speakers: `Recipe.speakers` (uniform in the range) drawn from the pool; each has a talkativeness (a
   Dirichlet(3) draw) and a level (uniform in `Recipe.gain_db`).
2. Turns: the first turns go through the speakers twice, each round in a random order (everyone takes at
   least two turns, as in a conversation worth diarizing: with one turn of one short clip a voice had 1 s
   in all), the rest pick a speaker other than the last by talkativeness; a turn is 1-3 of that speaker's
   clips (never reused
   within a conversation while unused ones remain) joined by within-turn pauses of 0.1-0.4 s. Turns are
   added until the conversation reaches a length drawn from `Recipe.seconds`.
3. Timing: between turns a pause of 0.1 s plus an exponential one of mean `Recipe.pause`; with probability
   `Recipe.overlap`, the next turn instead starts 0.5-1.5 s before the last one ends (never more than half
   of it): two voices at once.
4. Reference: each clip's own speech, found on the clean clip (20 ms frames within 35 dB of the clip's
   loudest frame, pauses under 0.3 s bridged, bursts under 0.1 s dropped), so leading and trailing silence
   and real pauses are not counted as speech. Clips are peak-normalised, then scaled by the speaker's level.
5. Noise over the whole mixture: white, pink (1/f), brown (1/f^2) or babble (four clips of speakers not in
   the conversation, summed and looped), chosen in turn; at an SNR drawn from `Recipe.snr_db`, measured
   against the mean power of the mixture over its reference speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from speaker_app.features import read_audio
from speaker_app.segments import Segment

RATE = 16000
NOISES = ("white", "pink", "brown", "babble")


@dataclass(frozen=True)
class Recipe:
    speakers: tuple[int, int] = (2, 6)  # inclusive range
    seconds: tuple[float, float] = (60.0, 120.0)
    clips_per_turn: tuple[int, int] = (1, 3)
    pause: float = 0.4  # mean of the exponential part of a pause between turns, seconds
    overlap: float = 0.35  # probability that a turn starts before the last one ends (about 5 % of speech time)
    gain_db: tuple[float, float] = (-6.0, 0.0)
    snr_db: tuple[float, ...] = (20.0, 10.0, 5.0)
    noises: tuple[str, ...] = NOISES

    def __post_init__(self):
        if not 1 <= self.speakers[0] <= self.speakers[1]:
            raise ValueError(f"speakers must be a range within 1.., got {self.speakers}")
        if not set(self.noises) <= set(NOISES) or not self.snr_db:
            raise ValueError(f"noises must be among {NOISES} and snr_db not empty: {self}")


class Conversation(NamedTuple):
    wave: np.ndarray  # (N,) float32 at RATE
    reference: list[Segment]  # who speaks when, in time order (overlapping where two speak)
    speakers: list[str]
    clips: list[str]  # the clips used, relative to their root
    noise: str
    snr_db: float

    @property
    def seconds(self) -> float:
        return len(self.wave) / RATE


def speech_spans(wave: np.ndarray, floor_db: float = 35.0, bridge: float = 0.3, shortest: float = 0.1):
    """(N,) clean single-speaker clip -> its speech as (start, end) seconds (see the module's step 4)."""
    frame = RATE // 50
    frames = len(wave) // frame
    if frames == 0:
        return []
    power = (wave[: frames * frame].astype(np.float64).reshape(frames, frame) ** 2).mean(1)
    loud = 10 * np.log10(power + 1e-12) > 10 * np.log10(power.max() + 1e-12) - floor_db
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
    spans = []
    for start, end in zip(edges[::2] * 0.02, edges[1::2] * 0.02):
        if spans and start - spans[-1][1] < bridge:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return [(float(s), float(e)) for s, e in spans if e - s >= shortest]


def load_clip(path: Path) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A clip, peak-normalised and cut to its speech, and its speech spans relative to the cut."""
    wave = read_audio(path, RATE)
    peak = float(np.abs(wave).max()) if len(wave) else 0.0
    spans = speech_spans(wave) if peak > 0 else []
    if not spans:
        return np.zeros(0, np.float32), []
    start, end = int(spans[0][0] * RATE), int(spans[-1][1] * RATE)
    return (wave[start:end] / peak).astype(np.float32), [(s - spans[0][0], e - spans[0][0]) for s, e in spans]


def colored_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """(length,) unit-power white, pink (1/f power) or brown (1/f^2) noise."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequency = np.fft.rfftfreq(length, 1 / RATE).clip(min=20.0)  # no runaway below 20 Hz
    spectrum /= {"white": 1.0, "pink": np.sqrt(frequency), "brown": frequency}[kind]
    noise = np.fft.irfft(spectrum, length)
    return noise / np.sqrt((noise ** 2).mean())


def babble(pool: dict[str, list[Path]], excluded: set[str], length: int, rng: np.random.Generator) -> np.ndarray:
    """(length,) unit-power sum of four looped clips of speakers outside the conversation."""
    others = sorted(set(pool) - excluded)
    noise = np.zeros(length)
    for speaker in rng.choice(others, size=min(4, len(others)), replace=False):
        clip, _ = load_clip(pool[speaker][rng.integers(len(pool[speaker]))])
        if len(clip):
            noise += np.resize(clip, length)
    power = (noise ** 2).mean()
    return noise / np.sqrt(power) if power > 0 else noise


def make_turn(clips: list[Path], count: int, rng: np.random.Generator):
    """1-3 clips of one speaker joined by short pauses -> (wave, speech spans, clips used)."""
    waves, spans, used, at = [], [], [], 0.0
    for path in clips[:count]:
        wave, clip_spans = load_clip(path)
        if not len(wave):
            continue
        if waves:
            gap = rng.uniform(0.1, 0.4)
            waves.append(np.zeros(int(gap * RATE), np.float32))
            at += gap
        waves.append(wave)
        spans += [(at + s, at + e) for s, e in clip_spans]
        used.append(path)
        at += len(wave) / RATE
    return (np.concatenate(waves) if waves else np.zeros(0, np.float32)), spans, used


def next_clips(queue: list[Path], everything: list[Path], count: int, rng: np.random.Generator) -> list[Path]:
    """`count` clips from the speaker's unused ones (refilled from all of theirs when they run out)."""
    if len(queue) < count:
        queue.extend(rng.permutation(everything).tolist())
    taken = queue[:count]
    del queue[:count]
    return [Path(p) for p in taken]


def schedule(n: int, talk: np.ndarray, turn: int, last: int | None, rng: np.random.Generator,
             order: np.ndarray) -> int:
    """Who takes turn number `turn`: everyone twice in `order` ((2n,): two rounds) first, then anyone but the
    last speaker."""
    if turn < len(order):
        return int(order[turn])
    weights = talk.copy()
    if last is not None and n > 1:
        weights[last] = 0.0
    return int(rng.choice(n, p=weights / weights.sum()))


def build(pool: dict[str, list[Path]], recipe: Recipe, seed: int, index: int, root: Path | None = None,
          reserve: int = 0) -> Conversation:
    """Conversation number `index` of the series `seed`: speakers from `pool` ({speaker: clips, sorted}),
    never using a speaker's first `reserve` clips (kept to enroll them). See the module's recipe."""
    rng = np.random.default_rng([seed, index])
    n = int(min(rng.integers(recipe.speakers[0], recipe.speakers[1] + 1), len(pool)))
    speakers = sorted(rng.choice(sorted(pool), size=n, replace=False).tolist())
    available = [[str(p) for p in pool[s][reserve:]] or [str(p) for p in pool[s]] for s in speakers]
    queues = [rng.permutation(clips).tolist() for clips in available]
    talk, gains = rng.dirichlet(np.full(n, 3.0)), 10 ** (rng.uniform(*recipe.gain_db, size=n) / 20)
    target = rng.uniform(*recipe.seconds)
    order = np.concatenate([rng.permutation(n), rng.permutation(n)])
    if n > 1 and order[n] == order[n - 1]:  # no one follows themself between the rounds
        order[[n, n + 1]] = order[[n + 1, n]]
    placed, cursor, last, turn, previous_length = [], 0.0, None, 0, 0.0
    while cursor < target or turn < len(order):
        who = schedule(n, talk, turn, last, rng, order)
        count = int(rng.integers(recipe.clips_per_turn[0], recipe.clips_per_turn[1] + 1))
        wave, spans, used = make_turn(next_clips(queues[who], available[who], count, rng), count, rng)
        turn += 1
        if not len(wave):
            continue
        if turn > 1 and rng.random() < recipe.overlap:
            start = max(0.0, cursor - min(rng.uniform(0.5, 1.5), previous_length / 2))
        else:
            start = cursor + (0.1 + rng.exponential(recipe.pause) if turn > 1 else rng.uniform(0.2, 1.0))
        placed.append((start, wave * gains[who], spans, who, used))
        cursor, last, previous_length = max(cursor, start + len(wave) / RATE), who, len(wave) / RATE
    return mix(placed, speakers, pool, recipe, index, rng, cursor, root)


def mix(placed, speakers: list[str], pool, recipe: Recipe, index: int, rng: np.random.Generator, end: float,
        root: Path | None) -> Conversation:
    """The placed turns summed, the reference written, and noise added at the chosen SNR."""
    wave = np.zeros(int((end + rng.uniform(0.3, 1.0)) * RATE))
    reference, clips = [], []
    for start, turn, spans, who, used in placed:
        first = int(start * RATE)
        wave[first: first + len(turn)] += turn
        reference += [Segment(start + s, start + e, speakers[who]) for s, e in spans]
        clips += [str(p.relative_to(root)) if root else str(p) for p in used]
    kind = recipe.noises[index % len(recipe.noises)]
    snr = recipe.snr_db[(index // len(recipe.noises)) % len(recipe.snr_db)]
    noise = (babble(pool, set(speakers), len(wave), rng) if kind == "babble"
             else colored_noise(kind, len(wave), rng))
    active = np.zeros(len(wave), bool)
    for segment in reference:
        active[int(segment.start * RATE): int(segment.end * RATE)] = True
    speech_power = (wave[active] ** 2).mean() if active.any() else 1.0
    wave = wave + noise * np.sqrt(speech_power / 10 ** (snr / 10))
    wave *= 0.9 / max(np.abs(wave).max(), 1e-9)  # no clipping when written as 16-bit PCM
    return Conversation(wave.astype(np.float32), sorted(reference), speakers, clips, kind, float(snr))
