"""bf16 autocast against float32 on a GPU: the same steps on the same data should end at the same accuracy.

    python -m bench.precision --data DIR [--steps 300] [--seed 0] [--work DIR] [--device cuda]

Trains the default model twice with `python -m training.train --data DIR
--steps N --seed S --set precision=bf16|fp32` (same split, initialisation,
batches and augmentation; only the arithmetic differs) and scores each best.pt
on the data's held-out clips (top-1 among its speakers). DIR is a prepared
folder with test labels, e.g. ../shared/speech prepared as bench.accuracy does.
Writes the `precision` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import common
from .accuracy import run, score


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared folder with test_labels.csv")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run (both float32)")
    parser.add_argument("--work", type=Path, help="folder for the two runs (default: a new temporary one)")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: bf16 autocast is the CUDA path; no CUDA device is available")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-precision-"))
    started, rows, results = time.perf_counter(), [], {}
    for precision in ("bf16", "fp32"):
        out = work / precision
        wall = run(["-m", "training.train", "--data", str(args.data), "--out", str(out), "--steps", str(args.steps),
                    "--seed", str(args.seed), "--device", args.device, *common.short_budget(args.steps),
                    "--set", f"valid_every={args.steps}", "--set", f"precision={precision}", "--no-progress"],
                   work / f"{precision}.log")
        results[precision] = {**score(out, args.data), "wall_s": wall}
        r = results[precision]
        rows.append([precision, f"{r['top1'] * 100:.2f}", f"{r['top5'] * 100:.2f}", f"{r['eer'] * 100:.2f}", f"{wall:.0f}"])
        print(f"{precision}: top-1 {r['top1']:.4f}, {wall:.0f} s", flush=True)
    gap = (results["bf16"]["top1"] - results["fp32"]["top1"]) * 100
    text = "\n".join([
        common.header("bf16 autocast against float32 (GPU)", time.perf_counter() - started),
        f"The default model, {args.steps} steps (batch 64 x 200, a tenth of the steps as warm-up), seed {args.seed}, "
        f"on {args.device}; the same data, split, initialisation, batches and augmentation, only the arithmetic "
        f"differs (`--set precision=bf16` or `fp32`). Scored on the {results['fp32']['n']} held-out clips of "
        f"{results['fp32']['speakers']} speakers with each run's best.pt.\n",
        common.table(["precision", "top-1 %", "top-5 %", "EER %", "train wall (s)"], rows), "",
        f"bf16 minus float32: {gap:+.2f} points of top-1 ({'within' if abs(gap) <= 1 else 'NOT within'} 1 point).",
    ]) + "\n"
    common.write_section("precision", text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
