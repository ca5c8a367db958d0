"""Latency of identifying a 5-second clip with every output the app shows, stage by stage.

    python -m bench.app_latency [--checkpoint checkpoints/default.pt] [--runs 20] [--baseline REV]
                                [--url http://127.0.0.1:7860/]

In process (`bench/app_timer.py`, in a process of its own): the Identify handler (decode, features,
model, attention maps, both figures) plus Gradio's own post-processing of its outputs (the figures
rendered to PNG, the label), timed after two warm-up runs, with the app's torch threads (half the
cores) unless --threads says otherwise, and broken down into stages: decoding, features (and the
speech check), windows (cutting, padding, pooling the windows' embeddings), model (the network,
every member of an ensemble), scoring (decisions, top-k, verdict), explanation (attention maps
and pooling weights kept for the plots), figures (built, or given their data) and drawing + PNG
(Agg draws them, PNG encodes them).

With --baseline REV, the same measurement runs on git revision REV (its files, from `git archive`,
serving its own checkpoints/default.pt as it shipped, unless --baseline-checkpoint says otherwise)
in the same run: rounds of runs alternate between the two, so that other work on the machine slows
both alike, and the report gives the ratio of the medians. With --url, /identify through a running
app with gradio_client (upload, HTTP and the answer; the page draws the figures in a second event).
It rewrites the `app` section of bench/RESULTS.md (`--print-only`: print it only).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from tests.helpers import client as gradio_user
from tests.helpers import five_second_clip  # Allison's held-out clip looped to 5 s at 44.1 kHz

from . import common
from .app_timer import ORDER

ROOT = common.REPO
SECONDS, RATE = 5.0, 44100  # what five_second_clip makes: a browser's microphone recording
TIMER = Path(__file__).resolve().with_name("app_timer.py")


class Timer:
    """bench/app_timer.py on one source tree, in its own process: loaded once, then asked for runs."""

    def __init__(self, name: str, tree: Path, checkpoint: Path, clip: Path, threads: int, shown: str):
        self.name, self.shown, self.runs = name, shown, []
        self.process = subprocess.Popen(
            [sys.executable, str(TIMER), "--tree", str(tree), "--checkpoint", str(checkpoint), "--clip", str(clip),
             "--threads", str(threads)], cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.facts = self._answer()

    def _answer(self):
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"error: the timer of {self.name} exited with {self.process.wait()} (its messages above)")
        return json.loads(line)

    def run(self, count: int) -> None:
        self.process.stdin.write(f"{count}\n")
        self.process.stdin.flush()
        self.runs += self._answer()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()

    @property
    def totals(self) -> list[float]:
        return [run["total"] for run in self.runs]

    def stage_ms(self, stage: str) -> float:
        return statistics.median(run["stages"][stage] for run in self.runs) * 1000


def export_revision(revision: str, folder: Path) -> str:
    """REV's files (`git archive`) unpacked into folder; -> its short hash."""
    done = subprocess.run(["git", "rev-parse", "--short", f"{revision}^{{commit}}"], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"error: no git revision {revision!r}: {done.stderr.strip()}")
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return done.stdout.strip()


def alternate(timers: list[Timer], runs: int, rounds: int) -> None:
    """`runs` runs of each timer in `rounds` rounds, the order of the timers swapped from round to round."""
    for i in range(rounds):
        count = runs // rounds + (i < runs % rounds)
        for timer in timers if i % 2 == 0 else timers[::-1]:
            timer.run(count)


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (f"median {statistics.median(times) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
            f"min {ordered[0] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms over {len(times)} runs")


def breakdown(timers: list[Timer]) -> str:
    """Median milliseconds of each stage, one column per timer."""
    rows = [[stage, *(f"{timer.stage_ms(stage):.1f}" for timer in timers)] for stage in ORDER]
    rows.append(["**total** (median of the runs)", *(f"**{statistics.median(t.totals) * 1000:.1f}**" for t in timers)])
    return common.table(["stage (median ms)", *(t.name for t in timers)], rows)


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


def over_http(url: str, clip: Path, runs: int) -> list[float]:
    from gradio_client import handle_file

    client = gradio_user(url)

    def once():
        client.predict(handle_file(str(clip)), None, 5, api_name="/identify")

    return timed(once, runs)


def describe_model(timer: Timer) -> str:
    facts = timer.facts
    members = f"an ensemble of {facts['members']}" if facts["members"] > 1 else "one network"
    windows = f", windows of {facts['window_frames']} frames" if facts["window_frames"] else ""
    return f"`{timer.shown}` ({members}{windows})"


def shown(path: Path) -> str:
    """A checkpoint's path as the report gives it: relative to the checkout when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def report(ours: Timer, baseline: Timer | None, revision: str | None, http: list[float] | None, wall_s: float) -> str:
    lines = [common.header("App latency: identify a 5-second clip (CPU)", wall_s),
             f"A {SECONDS:.0f}-second clip at {RATE} Hz (Allison, held out), torch threads: {ours.facts['threads']}. "
             "Every output of the Identify tab: decoding, features, model, top-k, verdict, attention maps, both "
             "figures rendered to PNG.", "",
             f"- this checkout, {describe_model(ours)}: {summary(ours.totals)}"]
    timers = [ours]
    if baseline is not None:
        ratio = statistics.median(ours.totals) / statistics.median(baseline.totals)
        lines += [f"- revision {revision}, {describe_model(baseline)}: "
                  f"{summary(baseline.totals)}",
                  f"- this checkout / {revision}: **{ratio:.2f}** of its median, measured in the same run "
                  "(rounds alternating)"]
        timers.append(baseline)
    if http:
        lines.append(f"- HTTP round trip (gradio_client, the answer without the figures): {summary(http)}")
    lines += [common.MORE,
              "Each stage: the median over the runs of the time spent in its functions (`bench/app_timer.py`, STAGES), "
              "less that of other stages inside them; `other` is the rest (the handlers, the label).", "",
              breakdown(timers)]
    for timer in timers:
        if timer.facts["missing"]:
            lines.append(f"\n{timer.name} has none of the functions of {', '.join(timer.facts['missing'])}: "
                         "counted in `other`.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.app_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default.pt")
    parser.add_argument("--runs", type=int, default=20, help="timed runs (of each revision)")
    parser.add_argument("--rounds", type=int, default=5, help="with --baseline: rounds the runs are split into")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the app's, half the cores)")
    parser.add_argument("--baseline", metavar="REV", help="also time git revision REV, in the same run")
    parser.add_argument("--baseline-checkpoint", type=Path,
                        help="the checkpoint REV serves (default: its own checkpoints/default.pt)")
    parser.add_argument("--url", help="also time a running app over HTTP")
    parser.add_argument("--results", type=Path, help="file whose `app` section to rewrite (default bench/RESULTS.md)")
    parser.add_argument("--print-only", action="store_true", help="print the section, write no file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-app-") as folder:
        folder = Path(folder)
        clip = five_second_clip(folder)
        checkpoint = args.checkpoint.resolve()
        ours = Timer("this checkout", ROOT, checkpoint, clip, args.threads, shown(checkpoint))
        timers, revision = [ours], None
        if args.baseline:
            tree = folder / "baseline"
            revision = export_revision(args.baseline, tree)
            own = args.baseline_checkpoint is None
            checkpoint = (tree / "checkpoints" / "default.pt" if own else args.baseline_checkpoint).resolve()
            timers.append(Timer(revision, tree, checkpoint, clip, ours.facts["threads"],
                                f"{revision}:checkpoints/default.pt" if own else shown(checkpoint)))
        torch.set_num_threads(ours.facts["threads"])  # what the header reports
        alternate(timers, args.runs, args.rounds if args.baseline else 1)
        for timer in timers:
            timer.close()
        http = over_http(args.url, clip, args.runs) if args.url else None
        text = report(ours, timers[1] if args.baseline else None, revision, http, time.perf_counter() - started)
    common.write_section("app", text, None if args.print_only else args.results or common.RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
