"""Shared fixtures: the real speech folder beside the checkout, and small synthetic signals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("SPEECH_DIR", ROOT.parent / "shared" / "speech"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not (SPEECH / "vcc2016").is_dir():
        pytest.skip(f"real speech not found at {SPEECH} (set SPEECH_DIR or place ../shared/speech beside the checkout)")
    return SPEECH


def voiced(seconds: float, rate: int = 16000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A buzzy harmonic tone with a little noise: loud enough to pass the silence threshold."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20))
    wave += 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)
