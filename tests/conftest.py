"""Shared fixtures: the real speech folder beside the checkout, small synthetic signals, the app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
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


# -- the app ---------------------------------------------------------------------------------
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "default.pt"


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip(f"the trained model is missing: {DEFAULT_CHECKPOINT.relative_to(ROOT)} (the default checkpoint)")
    return DEFAULT_CHECKPOINT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(default_checkpoint, tmp_path_factory):
    """`python app.py` serving the default model on a free port: (url, gallery folder)."""
    folder = tmp_path_factory.mktemp("app")
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "SPEAKER_GALLERY": str(folder / "gallery")}
    env.pop("GRADIO_SERVER_NAME", None)
    log = open(folder / "app.log", "w")
    process = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(default_checkpoint)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{(folder / 'app.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer within 180 s:\n{(folder / 'app.log').read_text()}")
            time.sleep(0.5)
        yield url, folder / "gallery"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
