"""Inference speed on the CPU: the shipped model as served and in torch alone vs ECAPA-TDNN of similar size.

    python -m bench.inference_speed [--quick] [--repeats N] [--checkpoint CKPT] [--results PATH]

For 1, 5 and 20 s of real speech (vcc2016 clips of ../shared/speech joined
end to end), with 1 thread and with all threads, it times feature extraction
(`features_from_wave`: normalisation, silence removal, log-mel) and the model
(`speaker_app.inference.infer` on the clip, as the app runs it: its embedding
windows when the checkpoint sets them, every member of an ensemble, the head)
separately: warm-up runs, then the median of the repeats. The model is the
shipped checkpoint as it ships (`checkpoints/default.pt`, or --checkpoint),
as the app serves it (`speaker_app.onnx_model.served`: its embeddings in
onnxruntime, with that many intra-op threads, when its export lies beside it)
and in torch alone; ECAPA-TDNN has
random weights (speed does not depend on them). Real-time factor = processing
time / audio duration. Every configuration runs in a fresh process, so its
peak resident memory (`getrusage`) is its own; the table also gives the growth
over the resident size before the first clip (model built, audio loaded).
Writes the `inference` section of bench/RESULTS.md (with --quick: prints it
only, unless --results is given).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import common

DURATIONS = (1.0, 5.0, 20.0)
MODELS = {"shipped": "shipped model, as served", "torch": "shipped model, torch alone", "ecapa": "ECAPA-TDNN"}
N_SPEAKERS = 31  # ECAPA-TDNN's head: its size does not change the embedding's cost
TARGET_RTF = 0.004  # the shipped model's, 5 s clip, 1 thread, features included (issue 41)


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


def build(kind: str, checkpoint: Path):
    """-> (model for `infer`, parameter count): the shipped checkpoint as served or in torch, or ECAPA-TDNN.
    onnxruntime takes as many threads as torch has when the model is built."""
    from speaker_app.checkpoint import load_checkpoint
    from speaker_app.ecapa import ecapa_config
    from speaker_app.onnx_model import served
    from speaker_app.registry import build_model

    if kind == "ecapa":
        model = build_model(ecapa_config(), N_SPEAKERS)
        return model.eval(), sum(p.numel() for p in model.parameters())
    loaded = load_checkpoint(checkpoint)
    params = sum(t.numel() for t in loaded.state_dict.values() if t.is_floating_point())
    return (served(loaded) if kind == "shipped" else loaded.build_model()), params


def measure(kind: str, threads: int, seconds: float, repeats: int, root: Path, checkpoint: Path) -> dict:
    """One configuration, in this (fresh) process."""
    from speaker_app.features import FeatureConfig, features_from_wave
    from speaker_app.inference import infer

    torch.set_num_threads(threads)
    config = FeatureConfig()
    wave = speech(seconds, root, config.sample_rate)
    model, params = build(kind, checkpoint)
    before = resident_mb()
    feature_s, model_s = [], []
    with torch.inference_mode():
        for i in range(repeats + 3):  # three warm-up runs
            start = time.perf_counter()
            features = features_from_wave(wave, config)
            middle = time.perf_counter()
            infer(model, [features])
            end = time.perf_counter()
            if i >= 3:
                feature_s.append(middle - start)
                model_s.append(end - middle)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"frames": len(features), "features_ms": statistics.median(feature_s) * 1e3,
            "model_ms": statistics.median(model_s) * 1e3, "params": params,
            "peak_mb": peak, "growth_mb": peak - before}


def child(kind: str, threads: int, seconds: float, repeats: int, root: Path, checkpoint: Path) -> dict:
    args = [sys.executable, "-m", "bench.inference_speed", "--child", kind, str(threads), str(seconds),
            "--repeats", str(repeats), "--speech", str(root), "--checkpoint", str(checkpoint)]
    done = subprocess.run(args, cwd=common.REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def shipped(checkpoint: Path) -> str:
    """What the checkpoint is, in words: how many networks, which windows, what runs the embeddings."""
    from speaker_app.checkpoint import load_checkpoint
    from speaker_app.onnx_model import OnnxEmbedded, served

    loaded = load_checkpoint(checkpoint)
    config, frame_seconds = loaded.model_config, loaded.feature_config.frame_seconds
    networks = f"an ensemble of {config.members} networks" if config.members > 1 else "one network"
    windows = (f", embedding windows of {config.window_frames * frame_seconds:g} s" if config.window_frames
               else ", whole clips")
    path = checkpoint.resolve()
    shown = path.relative_to(common.REPO) if path.is_relative_to(common.REPO) else path.name
    runner = (f"embeddings by onnxruntime from `{path.with_suffix('.onnx').name}` beside it"
              if isinstance(served(loaded), OnnxEmbedded) else "in torch (no export beside it)")
    return f"`{shown}`: {networks}{windows}, {runner}"


def report(results: list[dict], repeats: int, wall_s: float, model: str) -> str:
    rows = []
    for r in results:
        total = r["features_ms"] + r["model_ms"]
        rows.append([MODELS[r["kind"]], f"{r['params'] / 1e6:.2f} M", r["threads"], f"{r['seconds']:g}", r["frames"],
                     f"{r['features_ms']:.1f}", f"{r['model_ms']:.1f}", f"{total:.1f}",
                     f"{total / 1e3 / r['seconds']:.4f}", f"{r['features_ms'] / 1e3 / r['seconds']:.4f}",
                     f"{r['peak_mb']:.0f}", f"{r['growth_mb']:.0f}"])

    def rtf(kind: str) -> float | None:  # a 5 s clip, 1 thread, features included
        row = next((r for r in results if r["kind"] == kind and r["threads"] == 1 and r["seconds"] == 5.0), None)
        return row and (row["features_ms"] + row["model_ms"]) / 1e3 / row["seconds"]

    ours, alone = rtf("shipped"), rtf("torch")
    gpu = " GPU: not measured: no GPU available." if not torch.cuda.is_available() else ""
    text = [common.header("Inference speed (CPU)", wall_s)]
    if ours:
        text += [f"The shipped model ({model}) on a 5 s clip with 1 thread, features included: RTF {ours:.4f} "
                 f"({'meets' if ours <= TARGET_RTF else 'MISSES'} the target of at most {TARGET_RTF}; "
                 f"{1 / ours:.0f} times faster than real time).", ""]
    if ours and alone:
        text += [f"The same network in torch alone (5 s clip, 1 thread, features included): RTF {alone:.4f}, "
                 f"{alone / ours:.2f} times as long as served."]
    text += [common.MORE,
             f"Real speech (vcc2016 clips joined, 16 kHz); frames are what is left after silence removal. "
             f"Median of {repeats} runs after 3 warm-up runs, one clip at a time; `features` is "
             f"`features_from_wave` (normalise, remove silence, log-mel), `model` is `speaker_app.inference.infer` "
             f"on the (T, 40) features, as the app runs the model (its windows, every member, the head); total = "
             f"both. RTF = time / audio duration (lower is faster). Peak RSS: the process's peak resident memory "
             f"(Python, torch, model, audio); growth: over the resident size before the first clip. Models: the "
             f"shipped model ({model}) as the app serves it (`speaker_app.onnx_model.served`, `threads` "
             f"intra-op threads) and the same network in torch alone, and ECAPA-TDNN (SpeechBrain, 264 channels, "
             f"random weights).{gpu}\n",
             common.table(["model", "params", "threads", "clip (s)", "frames", "features (ms)", "model (ms)",
                           "total (ms)", "RTF total", "RTF features", "peak RSS (MB)", "growth (MB)"], rows)]
    return "\n".join(text) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inference_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repeats, results printed only")
    parser.add_argument("--repeats", type=int, help="timed runs per configuration (default 30, --quick 3)")
    parser.add_argument("--speech", type=Path, default=common.SPEECH, help="folder holding vcc2016/")
    parser.add_argument("--checkpoint", type=Path, default=common.REPO / "checkpoints" / "default.pt",
                        help="the model to time (default: the shipped one, checkpoints/default.pt)")
    parser.add_argument("--results", type=Path, help="file whose `inference` section to rewrite (default bench/RESULTS.md)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="which rows to time (default: all; the shipped model's own is `shipped`)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "THREADS", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 30)
    if args.child:
        kind, threads, seconds = args.child
        print(json.dumps(measure(kind, int(threads), float(seconds), repeats, args.speech, args.checkpoint)))
        return 0
    started = time.perf_counter()
    results = []
    for kind in args.models:
        for threads in sorted({1, os.cpu_count()}):
            for seconds in DURATIONS:
                results.append({"kind": kind, "threads": threads, "seconds": seconds,
                                **child(kind, threads, seconds, repeats, args.speech, args.checkpoint)})
                r = results[-1]
                print(f"{kind} {threads} thread(s) {seconds:g} s: features {r['features_ms']:.1f} ms, "
                      f"model {r['model_ms']:.1f} ms", flush=True)
    text = report(results, repeats, time.perf_counter() - started, shipped(args.checkpoint))
    common.write_section("inference", text, args.results or (None if args.quick else common.RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
