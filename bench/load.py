"""Load on a running app: concurrent gradio_client users identifying while others enroll.

    python -m bench.load [--checkpoint checkpoints/default.pt] [--users 16] [--requests 10] [--enrollments 16]

Starts `python app.py` on a free port with its own gallery folder and waits for it. After a warm-up,
`--users` threads each send `--requests` /identify requests (a 5 s clip at 44.1 kHz, as a browser
records) while `--enrollments` threads each enroll one new name. Reports latency (p50, p95, max),
failed requests, the server's resident memory before and after, and whether the gallery file parses
and holds every enrolled name; writes the "load" section of bench/RESULTS.md (--no-write: only print).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, header, memory_mb, table, write_section
from speaker_app.recognizer import MAX_BATCH
# The app in a subprocess and its gradio_client users: the tests' own helpers (tests never import bench).
from tests.helpers import client, enroll_once, five_second_clip, gallery_names, identify_once, start_app, stop_app


# Memory is read once the server has been idle this long: it gives freed heap memory back every second
# (app.HEAP_TRIM_SECONDS), so the reading is what it keeps, not what the last requests had in flight.
SETTLE_SECONDS = 2.0


def run_load(url: str, clip: Path, users: int, requests: int, names: list[str], voices: list[Path]) -> dict:
    """Identify `clip` and enroll each name from its own voice at the same time; every request's latency or error."""
    latencies, failures, lock = [], [], threading.Lock()
    clients = [client(url) for _ in range(users + len(names))]  # connected before the clock starts

    def timed(call, *args):
        start = time.perf_counter()
        try:
            call(*args)
        except Exception as error:  # any failure counts; the load goes on
            with lock:
                failures.append(f"{call.__name__}: {type(error).__name__}: {str(error)[:200]}")
        else:
            with lock:
                latencies.append((call.__name__, time.perf_counter() - start))

    def user(index: int):
        for _ in range(requests):
            timed(identify_once, clients[index], clip)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    threads += [threading.Thread(target=timed, args=(enroll_once, clients[users + i], name, voice))
                for i, (name, voice) in enumerate(zip(names, voices))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "failures": failures, "wall_s": time.perf_counter() - start}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(checkpoint: Path, users: int, requests: int, enrollments: int, rounds: int, folder: Path) -> dict:
    """Start the app, warm it up, load it `rounds` times (enrollments in the first), return the figures."""
    clip = five_second_clip(folder)
    # Each enrolling visitor brings their own recording (here: the same speech at another gain). The app
    # deletes enrollment clips once embedded, and Gradio keeps identical uploads as one file.
    (folder / "voices").mkdir()
    voices = [five_second_clip(folder / "voices", 0.9 - 0.02 * i, f"voice-{i:02d}.wav") for i in range(enrollments + 1)]
    process, url = start_app(checkpoint, folder)
    try:
        warm = client(url)
        for _ in range(2):
            identify_once(warm, clip)
        enroll_once(warm, "warm-up", voices[-1])
        time.sleep(SETTLE_SECONDS)
        before = memory_mb(process.pid)
        names = [f"visitor {i:02d}" for i in range(enrollments)]
        result = {"latencies": [], "failures": [], "wall_s": 0.0, "rss_mb": [before]}
        for index in range(rounds):
            load = run_load(url, clip, users, requests, names if index == 0 else [], voices)
            for key in ("latencies", "failures"):
                result[key] += load[key]
            result["wall_s"] += load["wall_s"]
            time.sleep(SETTLE_SECONDS)
            result["rss_mb"].append(memory_mb(process.pid))
        result["expected_names"] = sorted(["warm-up", *names])
        try:
            result["gallery_names"] = gallery_names(folder)
        except (RuntimeError, ValueError, KeyError) as error:
            result["gallery_names"], result["gallery_error"] = [], str(error)
        result["server_alive"] = process.poll() is None
    finally:
        stop_app(process)
    return result


def summary(result: dict, users: int, requests: int, enrollments: int, rounds: int) -> list[list]:
    rows = []
    for kind, count in (("identify_once", rounds * users * requests), ("enroll_once", enrollments)):
        times = [t for k, t in result["latencies"] if k == kind]
        failed = sum(f.startswith(kind) for f in result["failures"])
        cells = ([f"{percentile(times, q) * 1000:.0f}" for q in (0.5, 0.95)] + [f"{max(times) * 1000:.0f}"]
                 if times else ["-"] * 3)
        rows.append([kind.removesuffix("_once"), count, *cells, failed])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "default.pt")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--requests", type=int, default=10, help="identify requests per user")
    parser.add_argument("--enrollments", type=int, default=16, help="enrollments sent at the same time")
    parser.add_argument("--rounds", type=int, default=3, help="times the identify load is repeated (memory)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args(argv)
    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        result = measure(args.checkpoint, args.users, args.requests, args.enrollments, args.rounds, Path(folder))
    gallery_ok = result["gallery_names"] == result["expected_names"]
    text = header("Load: concurrent users of the app", time.time() - start) + "\n"
    text += (f"{args.rounds} rounds of {args.users} gradio_client users x {args.requests} /identify requests (a 5 s "
             f"clip at 44.1 kHz), with {args.enrollments} /enroll requests (one clip each) during the first, "
             f"against `python app.py` serving "
             f"`{args.checkpoint.relative_to(REPO) if args.checkpoint.is_relative_to(REPO) else args.checkpoint}`. "
             f"/identify returns the answer (top-k and verdict; the page draws its plots in a second event). Up to "
             f"{MAX_BATCH} identify requests are in flight at once and the model runs the ones waiting for it as one "
             f"batch (speaker_app.batching); enrollments and verifications share another queue, of the same size. "
             f"Latency includes upload and waiting.\n\n")
    text += table(["request", "count", "p50 ms", "p95 ms", "max ms", "failed"],
                  summary(result, args.users, args.requests, args.enrollments, args.rounds)) + "\n\n"
    text += (f"- all requests done in {result['wall_s']:.1f} s; server still serving: {result['server_alive']}\n"
             f"- server RSS after warm-up, then after each round ({SETTLE_SECONDS:g} s after its last answer): "
             f"{', '.join(f'{mb:.0f}' for mb in result['rss_mb'])} MB (rounds differ by at most "
             f"{max(result['rss_mb'][1:]) / min(result['rss_mb'][1:]) - 1:.0%})\n"
             f"- gallery file parses and holds all {len(result['expected_names'])} enrolled names: {gallery_ok}"
             + (f" ({result.get('gallery_error') or result['gallery_names']})" if not gallery_ok else "") + "\n")
    for failure in result["failures"][:10]:
        text += f"- failure: {failure}\n"
    write_section("load", text, None if args.no_write else REPO / "bench" / "RESULTS.md")
    return 0 if not result["failures"] and gallery_ok and result["server_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
