"""Latency of identifying a 5-second clip with every output the app shows.

    python bench/app_latency.py [--checkpoint checkpoints/default.pt] [--runs 20] [--url http://127.0.0.1:7860/]

In process: the Identify handler (decode, features, model, attention maps, both figures) plus
Gradio's own post-processing of its outputs (the figures rendered to PNG, the label), timed after
two warm-up runs. With --url, the same request through a running app with gradio_client
(adds upload and HTTP). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIP = ROOT / "examples" / "allison_en-US_followme-status.flac"
SECONDS = 5.0
RATE = 44100  # what a browser microphone recording arrives as


def five_second_clip(folder: Path) -> Path:
    wave, rate = sf.read(CLIP, dtype="float32")
    wave = np.tile(wave, int(np.ceil(SECONDS * rate / len(wave))))[: int(SECONDS * rate)]
    path = folder / "five-seconds.wav"
    sf.write(path, soxr.resample(wave, rate, RATE), RATE, subtype="PCM_16")
    return path


def in_process(checkpoint: Path, clip: Path, runs: int) -> list[float]:
    import gradio as gr

    import app

    handlers = app.Handlers(app.load_recognizer(checkpoint, tempfile.mkdtemp()))
    plot, label = gr.Plot(format="png"), gr.Label()

    def once():
        top, verdict, features, attention, _ = handlers.identify(str(clip), None, 5, 1, 0)
        label.postprocess(top)
        plot.postprocess(features)
        plot.postprocess(attention)

    for _ in range(2):
        once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times


def over_http(url: str, clip: Path, runs: int) -> list[float]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, analytics_enabled=False, download_files=tempfile.mkdtemp())

    def once():
        client.predict(handle_file(str(clip)), None, 5, 1, 0, api_name="/identify")

    for _ in range(2):
        once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times


def report(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (f"{name}: median {statistics.median(times) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
            f"min {ordered[0] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms over {len(times)} runs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default.pt")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--url", help="also time a running app over HTTP")
    args = parser.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory() as folder:
        clip = five_second_clip(Path(folder))
        print(f"5.0 s clip at {RATE} Hz, torch threads: {torch.get_num_threads()}")
        print(report("handler + Gradio post-processing", in_process(args.checkpoint, clip, args.runs)))
        if args.url:
            print(report("HTTP round trip (gradio_client)", over_http(args.url, clip, args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
