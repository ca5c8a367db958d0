"""Latency of identifying a 5-second clip with every output the app shows.

    python -m bench.app_latency [--checkpoint checkpoints/default.pt] [--runs 20] [--url http://127.0.0.1:7860/]

In process: the Identify handler (decode, features, model, attention maps, both figures) plus
Gradio's own post-processing of its outputs (the figures rendered to PNG, the label), timed after
two warm-up runs. With --url, /identify through a running app with gradio_client (upload, HTTP
and the answer; the page draws the figures in a second event). Run it on an otherwise idle
machine; it rewrites the `app` section of bench/RESULTS.md (`--print-only`: print it only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import client as gradio_user
from tests.helpers import five_second_clip  # Allison's held-out clip looped to 5 s at 44.1 kHz

from . import common

ROOT = Path(__file__).resolve().parents[1]
SECONDS, RATE = 5.0, 44100  # what five_second_clip makes: a browser's microphone recording


def timed(once, runs: int) -> list[float]:
    """Seconds of each of `runs` calls of once(), after two warm-up calls."""
    for _ in range(2):
        once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times


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

    return timed(once, runs)


def over_http(url: str, clip: Path, runs: int) -> list[float]:
    from gradio_client import handle_file

    client = gradio_user(url)

    def once():
        client.predict(handle_file(str(clip)), None, 5, api_name="/identify")

    return timed(once, runs)


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
    parser.add_argument("--results", type=Path, help="file whose `app` section to rewrite (default bench/RESULTS.md)")
    parser.add_argument("--print-only", action="store_true", help="print the section, write no file")
    args = parser.parse_args(argv)
    import torch

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        clip = five_second_clip(Path(folder))
        lines = [f"A {SECONDS:.0f}-second clip at {RATE} Hz (Allison, held out), torch threads: "
                 f"{torch.get_num_threads()}, checkpoint `{args.checkpoint.name}`. Every output of the Identify "
                 "tab: decoding, features, model, top-k, verdict, attention maps, both figures rendered to PNG.",
                 "", "- " + report("handler + Gradio post-processing", in_process(args.checkpoint, clip, args.runs))]
        if args.url:
            lines.append("- " + report("HTTP round trip (gradio_client)", over_http(args.url, clip, args.runs)))
    text = common.header("App latency: identify a 5-second clip (CPU)", time.perf_counter() - started)
    path = None if args.print_only else args.results or common.RESULTS
    common.write_section("app", text + "\n" + "\n".join(lines) + "\n", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
