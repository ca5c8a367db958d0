"""How often the speech check (speaker_app.speech) refuses real speech, and what it refuses.

    python -m bench.speech_check [--audio-dir DIR ...] [--quick]

Every clip under each --audio-dir (default ../shared/speech) goes through the
app's feature pipeline and the speech check; clips the check refuses are listed
with their measures. Writes the `speech_check` section of bench/RESULTS.md (not
with --quick, which looks at every 20th clip).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from speaker_app.features import AudioError, FeatureConfig, features_from_array, features_from_file
from speaker_app.speech import MIN_CONTINUITY, MIN_ENERGY_MODULATION, check_speech
from training.prepare import find_clips

from . import common

RATE = 16000


def synthetic() -> dict[str, torch.Tensor]:
    """Inputs that are not speech, as (T, 40) features."""
    t = np.arange(3 * RATE) / RATE
    rng = np.random.default_rng(0)
    waves = {"1 kHz sine": 0.5 * np.sin(2 * np.pi * 1000 * t), "white noise": 0.3 * rng.standard_normal(len(t)),
             "1 kHz sine + noise": 0.5 * np.sin(2 * np.pi * 1000 * t) + 0.05 * rng.standard_normal(len(t)),
             "steady 140 Hz buzz": sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 20)) * 0.2}
    config = FeatureConfig()
    made = {name: features_from_array(wave.astype(np.float32), RATE, config) for name, wave in waves.items()}
    generator = torch.Generator().manual_seed(0)
    made.update({"constant (300, 40) tensor": torch.full((300, 40), -5.0),
                 "random (300, 40) tensor, N(0, 1)": torch.randn(300, 40, generator=generator),
                 "random (300, 40) tensor, N(-5, 3²)": torch.randn(300, 40, generator=generator) * 3 - 5})
    return made


def measure(root: Path, step: int) -> tuple[dict[str, list[int]], list[tuple[str, object]], int]:
    """{source: [clips, refused]}, the refused clips with their checks, and undecodable clips."""
    counts, refused, undecodable = defaultdict(lambda: [0, 0]), [], 0
    clips = [clip for speaker_clips in find_clips(root).values() for clip in speaker_clips][::step]
    config = FeatureConfig()
    for clip in clips:
        try:
            check = check_speech(features_from_file(root / clip, config))
        except AudioError:
            undecodable += 1
            continue
        source = clip.split("/")[0]
        counts[source][0] += 1
        if not check.speech:
            counts[source][1] += 1
            refused.append((clip, check))
    return dict(sorted(counts.items())), refused, undecodable


def report(results: dict, wall_s: float) -> str:
    lines = [common.header("Speech check: real speech refused", wall_s),
             f"Limits: energy modulation >= {MIN_ENERGY_MODULATION} nats and frame-to-frame continuity >= "
             f"{MIN_CONTINUITY} (speaker_app/speech.py).\n"]
    rows = []
    for root, (counts, refused, undecodable) in results.items():
        for source, (n, bad) in counts.items():
            rows.append([f"`{root}`", source, n, bad, f"{100 * bad / n:.2f}%"])
    lines.append(common.table(["folder", "source", "clips", "refused", "share"], rows))
    lines.append(common.MORE)
    for root, (counts, refused, undecodable) in results.items():
        if refused:
            lines.append(f"\nRefused under `{root}`:\n")
            lines += [f"- `{clip}`: energy modulation {c.energy_modulation:.2f}, continuity {c.continuity:.2f}"
                      for clip, c in refused]
    lines.append("\nNot speech (all must be refused):\n")
    lines += [f"- {name}: {'refused' if not c.speech else '**passed**'} (energy modulation "
              f"{c.energy_modulation:.2f}, continuity {c.continuity:.2f})"
              for name, c in ((name, check_speech(f)) for name, f in synthetic().items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speech_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", type=Path, action="append", help="folders of speaker folders")
    parser.add_argument("--quick", action="store_true", help="every 20th clip; print, do not write")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = {str(root): measure(root, 20 if args.quick else 1) for root in (args.audio_dir or [common.SPEECH])}
    common.write_section("speech_check", report(results, time.perf_counter() - started),
                         None if args.quick else args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
