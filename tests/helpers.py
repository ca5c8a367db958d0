"""What several tests share: the app as a server process, its gradio_client users, a 5-second clip,
and a process's memory. (The benchmarks in bench/ keep their own; tests never import bench.)"""

from __future__ import annotations

import functools
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from speaker_app.checkpoint import Checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.model import ModelConfig
from speaker_app.registry import build_model

ROOT = Path(__file__).resolve().parents[1]
ALLISON = ROOT / "examples" / "asterisk-allison_en-US_followme-status.flac"  # held out from training


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(checkpoint: Path, folder: Path, *args: str, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """`python app.py` serving `checkpoint` on a free port, its gallery, uploads (`gradio-uploads`) and
    log in `folder`; `args` go to app.py."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    for name in ("GRADIO_SERVER_NAME", "SPACE_ID", "GRADIO_TEMP_DIR"):
        env.pop(name, None)
    log = open(folder / "app.log", "w")
    # Run from `folder`, so the app's own upload folder (app.UPLOADS, relative) lands there too.
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(checkpoint),
                                "--gallery", str(folder / "gallery"), *args],
                               cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{(folder / 'app.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_app(process)
            raise RuntimeError(f"app.py did not answer within {timeout:.0f} s:\n{(folder / 'app.log').read_text()}")
        time.sleep(0.5)


TINY = ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16)


def tiny(config: ModelConfig = TINY, features: FeatureConfig = FeatureConfig(), speakers=("a", "b", "c"),
         seed: int = 0) -> Checkpoint:
    """A tiny untrained model (seeded) as a checkpoint."""
    torch.manual_seed(seed)
    return Checkpoint(config, features, list(speakers), build_model(config, len(speakers)).state_dict())


@contextmanager
def serving_tiny(folder: Path, *args: str):
    """`python app.py *args` serving a tiny untrained model from `folder`: (process, url)."""
    save_checkpoint(tiny(), folder / "tiny.pt")
    process, url = start_app(folder / "tiny.pt", folder, *args)
    try:
        yield process, url
    finally:
        stop_app(process)


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def five_second_clip(folder: Path, gain: float = 1.0, name: str = "five-seconds.wav") -> Path:
    """Allison's held-out clip looped to 5 s at 44.1 kHz (what a browser records), as a WAV file. Another
    gain makes another file of the same speech: Gradio keeps identical uploads as one file, and the app
    deletes enrollment clips, so concurrent visitors need files of their own."""
    wave, original = sf.read(ALLISON, dtype="float32")
    wave = np.tile(wave, int(np.ceil(5 * original / len(wave))))[: 5 * original]
    path = folder / name
    sf.write(path, gain * soxr.resample(wave, original, 44100), 44100, subtype="PCM_16")
    return path


def peak_growth_mb(work) -> float:
    """How far this process's peak resident memory rose above its resident memory during work()."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size (Linux)
        field = "VmHWM"
    except OSError:  # no reset: the resident memory afterwards is the best left
        field = "VmRSS"
    before = memory_mb()
    work()
    return memory_mb(field=field) - before


def memory_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


# -- gradio_client users ---------------------------------------------------------------------
@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def client(url: str, downloads: str | Path | None = None):
    """A gradio_client user of the app at `url`. gradio_client opens a new httpx client for every upload
    and queue call, and httpx then builds a TLS context from the CA bundle each time (~30 ms of CPU, even
    for http://); one context built once is passed instead, so that a load generator sharing the server's
    cores does not spend them on that."""
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads or tempfile.mkdtemp()),
                  ssl_verify=_tls_context())  # passed on to httpx as `verify`


def identify_once(user, clip: Path, top_k: int = 3) -> dict:
    from gradio_client import handle_file

    label, _ = user.predict(handle_file(str(clip)), None, top_k, api_name="/identify")
    if not label.get("confidences"):
        raise RuntimeError(f"an answer without speakers: {label}")
    return label


def enroll_once(user, name: str, clip: Path, replace: bool = False) -> str:
    from gradio_client import handle_file

    message, *_ = user.predict(name, [handle_file(str(clip))], replace, api_name="/enroll")
    if not message.startswith(("Enrolled **", "Replaced **")):
        raise RuntimeError(f"unexpected enrollment answer: {message}")
    return message


def run_together(calls: list) -> list:
    """Run zero-argument callables in threads at once; each one's result or exception, in order."""
    results = [None] * len(calls)

    def run(i):
        try:
            results[i] = calls[i]()
        except Exception as error:  # the caller asserts on it
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def gallery_names(folder: Path) -> list[str]:
    """Names in the app's gallery file; raises if it does not parse."""
    files = list((folder / "gallery").glob("*.json"))
    if len(files) != 1:
        raise RuntimeError(f"expected one gallery file, found {files}")
    return sorted(json.loads(files[0].read_text())["speakers"])
