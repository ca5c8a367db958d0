"""Shared fixtures: the real speech folder beside the checkout, small synthetic signals, the app."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import start_app, stop_app

ROOT = Path(__file__).resolve().parents[1]
SPEECH = Path(os.environ.get("SPEECH_DIR", ROOT.parent / "shared" / "speech"))

torch.set_num_threads(min(2, torch.get_num_threads()))


# Tests that train, start the app in a server, drive a browser or export to ONNX take seconds to
# minutes each: `python -m pytest -m "not slow"` leaves them out (CI runs everything).
SLOW_FIXTURES = {"app_server", "tiny_server", "visitors_app", "browser"}
SLOW_MODULES = {"test_pipeline", "test_distributed", "test_reliability_crash", "test_reliability_load",
                "test_export", "test_app_client", "test_browser", "test_gpu"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains, serves the app, drives a browser or exports (minutes)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not (SPEECH / "vcc2016").is_dir():
        pytest.skip(f"real speech not found at {SPEECH} (set SPEECH_DIR or place ../shared/speech beside the checkout)")
    return SPEECH


@pytest.fixture(scope="session")
def two_voices(speech_dir, tmp_path_factory):
    """A conversation made at test time (training.conversations): two voices of one source, a woman's and a
    man's read sentences, 40-50 s with pauses, a little overlap and white noise at 20 dB: (WAV path, the
    reference segments)."""
    import soundfile as sf

    from training.conversations import Recipe, build

    pool = {s: sorted((speech_dir / s).glob("*.flac")) for s in ("vcc2016/SF2", "vcc2016/SM1")}
    made = build(pool, Recipe(speakers=(2, 2), seconds=(40.0, 50.0), noises=("white",), snr_db=(20.0,)), seed=0,
                 index=0, root=speech_dir)
    path = tmp_path_factory.mktemp("conversation") / "two voices.wav"
    sf.write(path, made.wave, 16000, subtype="PCM_16")
    return path, made.reference


def voiced(seconds: float, rate: int = 16000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A buzzy harmonic tone with a little noise: loud enough to pass the silence threshold."""
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20))
    wave += 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def speechlike(seconds: float, rate: int = 16000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """`voiced` in syllables: its level rises and falls four times a second, as speech's does
    (a steady buzz is refused as no speech)."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t + seed)
    return (voiced(seconds, rate, f0, seed) * envelope).astype(np.float32)


def speechlike_features(frames: int, seed: int = 0) -> torch.Tensor:
    """(about `frames`, 40) log-mel features of `speechlike` audio, a different pitch for each seed."""
    from speaker_app.features import FeatureConfig, features_from_array

    return features_from_array(speechlike(frames / 100 + 0.05, f0=110.0 + 25 * seed, seed=seed), 16000, FeatureConfig())


# -- the app ---------------------------------------------------------------------------------
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default.pt"
EXAMPLES = ROOT / "examples"


def example_rows() -> list[dict]:
    """Every row of examples/sources.csv (file, clip, speaker, author, licence)."""
    with open(EXAMPLES / "sources.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"the trained model is missing: {DEFAULT_CHECKPOINT.relative_to(ROOT)} (the default checkpoint)")
    return DEFAULT_CHECKPOINT


@pytest.fixture(scope="session")
def app_server(default_checkpoint, tmp_path_factory):
    """`python app.py` serving the default model on a free port: (url, gallery folder)."""
    folder = tmp_path_factory.mktemp("app")
    try:
        process, url = start_app(default_checkpoint, folder)
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield url, folder / "gallery"
    finally:
        stop_app(process)
