"""Inference speed on the CPU: our Conformer in torch and in onnxruntime vs ECAPA-TDNN of similar size.

    python -m bench.inference_speed [--quick] [--repeats N] [--results PATH]

For 1, 5 and 20 s of real speech (vcc2016 clips of ../shared/speech joined
end to end), with 1 thread and with all threads, it times feature extraction
(`features_from_wave`: normalisation, silence removal, log-mel) and the
embedding (`model.embed` on the whole clip, one item, inference mode; for
onnxruntime, the same model exported by `training.export` and run by
`speaker_app.onnx_model` with that many intra-op threads) separately:
warm-up runs, then the median of the repeats. Real-time factor = processing
time / audio duration. Every configuration runs in a fresh
process, so its peak resident memory (`getrusage`) is its own; the table also
gives the growth over the resident size before the first clip (model built,
audio loaded). Weights are random: speed does not depend on them. Writes the
`inference` section of bench/RESULTS.md (with --quick: prints it only, unless
--results is given).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import common

DURATIONS = (1.0, 5.0, 20.0)
MODELS = {"conformer": "Conformer (ours)", "onnx": "Conformer (ours), onnxruntime", "ecapa": "ECAPA-TDNN"}
N_SPEAKERS = 31  # the head's size does not change the embedding's cost


def speech(seconds: float, root: Path, sample_rate: int) -> np.ndarray:
    """`seconds` of vcc2016 speech at `sample_rate`: its clips in name order, joined."""
    from speaker_app.features import read_audio

    need, pieces = int(seconds * sample_rate), []
    for path in sorted((root / "vcc2016").rglob("*.flac")):
        pieces.append(read_audio(path, sample_rate))
        if sum(map(len, pieces)) >= need:
            return np.concatenate(pieces)[:need]
    raise SystemExit(f"error: less than {seconds} s of audio under {root / 'vcc2016'}")


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(kind: str, threads: int, onnx_path: Path | None = None):
    """-> (model with `embed`, parameter count)."""
    from speaker_app.ecapa import ecapa_config
    from speaker_app.model import ModelConfig
    from speaker_app.registry import build_model

    if kind == "onnx":
        from speaker_app.onnx_model import load_onnx

        checkpoint = load_onnx(onnx_path, threads=threads)
        return checkpoint.build_model(), sum(t.numel() for t in checkpoint.state_dict.values())
    model = build_model(ecapa_config() if kind == "ecapa" else ModelConfig(), N_SPEAKERS).eval()
    return model, sum(p.numel() for p in model.parameters())


def export_default(path: Path) -> None:
    """The default ModelConfig with random weights, exported as `training.export` does."""
    from speaker_app.checkpoint import Checkpoint
    from speaker_app.features import FeatureConfig
    from speaker_app.model import ModelConfig
    from speaker_app.registry import build_model
    from training.export import export

    speakers = [f"speaker{i}" for i in range(N_SPEAKERS)]
    model = build_model(ModelConfig(), N_SPEAKERS)
    checkpoint = Checkpoint(ModelConfig(), FeatureConfig(), speakers, model.state_dict())
    export(checkpoint, path)


def measure(kind: str, threads: int, seconds: float, repeats: int, root: Path,
            onnx_path: Path | None = None) -> dict:
    """One configuration, in this (fresh) process."""
    from speaker_app.features import FeatureConfig, features_from_wave

    torch.set_num_threads(threads)
    config = FeatureConfig()
    wave = speech(seconds, root, config.sample_rate)
    model, params = build(kind, threads, onnx_path)
    before = resident_mb()
    feature_s, embed_s = [], []
    with torch.inference_mode():
        for i in range(repeats + 3):  # three warm-up runs
            start = time.perf_counter()
            features = features_from_wave(wave, config)
            middle = time.perf_counter()
            model.embed(features[None], torch.tensor([len(features)]))
            end = time.perf_counter()
            if i >= 3:
                feature_s.append(middle - start)
                embed_s.append(end - middle)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"frames": len(features), "features_ms": statistics.median(feature_s) * 1e3,
            "embed_ms": statistics.median(embed_s) * 1e3, "params": params,
            "peak_mb": peak, "growth_mb": peak - before}


def child(kind: str, threads: int, seconds: float, repeats: int, root: Path, onnx_path: Path) -> dict:
    args = [sys.executable, "-m", "bench.inference_speed", "--child", kind, str(threads), str(seconds),
            "--repeats", str(repeats), "--speech", str(root), "--onnx", str(onnx_path)]
    done = subprocess.run(args, cwd=common.REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], repeats: int, wall_s: float) -> str:
    rows = []
    for r in results:
        total = r["features_ms"] + r["embed_ms"]
        rows.append([MODELS[r["kind"]], f"{r['params'] / 1e6:.2f} M", r["threads"], f"{r['seconds']:g}", r["frames"],
                     f"{r['features_ms']:.1f}", f"{r['embed_ms']:.1f}", f"{total:.1f}",
                     f"{total / 1e3 / r['seconds']:.4f}", f"{r['features_ms'] / 1e3 / r['seconds']:.4f}",
                     f"{r['peak_mb']:.0f}", f"{r['growth_mb']:.0f}"])

    def rtf(kind: str) -> float:  # a 5 s clip, 1 thread, features included
        row = next(r for r in results if r["kind"] == kind and r["threads"] == 1 and r["seconds"] == 5.0)
        return (row["features_ms"] + row["embed_ms"]) / 1e3 / row["seconds"]

    ours, onnx = rtf("conformer"), rtf("onnx")
    gpu = " GPU: not measured: no GPU available." if not torch.cuda.is_available() else ""
    text = [common.header("Inference speed (CPU)", wall_s),
            f"Our RTF on a 5 s clip with 1 thread, features included: {ours:.4f} ({'meets' if ours <= 0.02 else 'MISSES'} "
            f"the target of at most 0.02; {1 / ours:.0f} times faster than real time).",
            "",
            f"The same model in onnxruntime (5 s clip, 1 thread, features included): RTF {onnx:.4f} against torch's "
            f"{ours:.4f} ({'meets' if onnx <= ours else 'MISSES'} the goal of at most torch's; "
            f"torch takes {ours / onnx:.2f} times as long).",
            common.MORE,
            f"Real speech (vcc2016 clips joined, 16 kHz); frames are what is left after silence removal. "
            f"Median of {repeats} runs after 3 warm-up runs, one clip at a time; `features` is "
            f"`features_from_wave` (normalise, remove silence, log-mel), `embed` is `model.embed` on (1, T, 40) "
            f"in inference mode; total = both. RTF = time / audio duration (lower is faster). Peak RSS: the "
            f"process's peak resident memory (Python, torch, model, audio); growth: over the resident size "
            f"before the first clip. Models: the default `ModelConfig` in torch, the same exported by "
            f"`training.export` and run by onnxruntime (`speaker_app.onnx_model`, `threads` intra-op threads), "
            f"and ECAPA-TDNN (SpeechBrain, 264 channels); random weights.{gpu}\n",
            common.table(["model", "params", "threads", "clip (s)", "frames", "features (ms)", "embed (ms)",
                          "total (ms)", "RTF total", "RTF features", "peak RSS (MB)", "growth (MB)"], rows)]
    return "\n".join(text) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inference_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repeats, results printed only")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration (default 30, --quick 3)")
    parser.add_argument("--speech", type=Path, default=common.SPEECH, help="folder holding vcc2016/")
    parser.add_argument("--results", type=Path, help="file whose `inference` section to rewrite (default bench/RESULTS.md)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "THREADS", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)  # the exported model, for the children
    parser.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 30)
    if args.child:
        kind, threads, seconds = args.child
        print(json.dumps(measure(kind, int(threads), float(seconds), repeats, args.speech, args.onnx)))
        return 0
    if args.export:
        export_default(args.export)
        return 0
    started = time.perf_counter()
    results = []
    folder = tempfile.TemporaryDirectory(prefix="bench-onnx-")
    # Exported in its own process: getrusage's peak would carry over from this one into every child.
    onnx_path = Path(folder.name) / "default.onnx"
    subprocess.run([sys.executable, "-m", "bench.inference_speed", "--export", str(onnx_path)], cwd=common.REPO, check=True)
    for kind in MODELS:
        for threads in sorted({1, os.cpu_count()}):
            for seconds in DURATIONS:
                results.append({"kind": kind, "threads": threads, "seconds": seconds,
                                **child(kind, threads, seconds, repeats, args.speech, onnx_path)})
                r = results[-1]
                print(f"{kind} {threads} thread(s) {seconds:g} s: features {r['features_ms']:.1f} ms, "
                      f"embed {r['embed_ms']:.1f} ms", flush=True)
    text = report(results, repeats, time.perf_counter() - started)
    common.write_section("inference", text, args.results or (None if args.quick else common.RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
