"""What makes the Conformer learn fast: one row per idea, alone and combined, same data, 2 seeds.

    python -m bench.ablation [--rows NAME ...] [--seeds 0 1] [--steps 250] [--jobs 2] [--work DIR] [--device cuda]

Every row is `python -m training.train` on ../shared/speech prepared as in
bench.accuracy (20 % of each speaker's clips held out, split seed 0) with the
short budget of bench.accuracy (250 steps, batch 64 x 200 frames, a tenth of
the steps as warm-up) plus the row's `--set` flags, scored on the held-out clips
(top-1 among the 31 speakers, clip-vs-clip EER) with its best.pt. Runs already
scored in --work are reused, so the command can be stopped and repeated. With
--jobs N, N runs share the machine (one thread each), so their wall times are
only comparable within one command. `--device cuda` trains on a GPU in
float32 (`--set precision=fp32`, the CPU's arithmetic), far faster than the
CPU. Writes the `ablation` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import common
from .accuracy import prepared, run, score

# The model before this study, spelled out: every row starts from it and changes what its flags say.
BEFORE = ["model.frontend=conv1d", "model.subsample=4", "model.conv_norm=layer", "model.position=none",
          "model.aggregate=last", "model.head=am", "model.ff_dim=576", "model.dropout=0.1"]
BEST = ["model.aggregate=mfa", "model.frontend=conv2d", "model.subsample=2", "model.conv_norm=batch"]
DEFAULT = BEST + ["model.dropout=0", "model.ff_dim=288"]  # the default ModelConfig the `default+` rows began from
# name -> (what the row changes, its --set flags over BEFORE)
ROWS = {
    "before": ("the model before this study: conv1d front end, subsample 4, LayerNorm, last block, AM", []),
    "mfa": ("multi-scale aggregation: every block's output, concatenated, is pooled", ["model.aggregate=mfa"]),
    "sub2": ("subsample 2 (conv1d front end)", ["model.subsample=2"]),
    "conv2d": ("2-D convolutional front end, subsample 4", ["model.frontend=conv2d"]),
    "conv2d-sub2": ("2-D convolutional front end, subsample 2", ["model.frontend=conv2d", "model.subsample=2"]),
    "bn": ("mask-aware BatchNorm in the convolution module", ["model.conv_norm=batch"]),
    "rotary": ("rotary positions in self-attention", ["model.position=rotary"]),
    "ramp": ("margin ramped in from 0 (none for the first 20 % of steps, full from 60 %)", ["margin_ramp=[0.2,0.6]"]),
    "aam": ("additive angular margin (ArcFace) instead of AM, m 0.2", ["model.head=aam"]),
    "lr4e-3": ("peak learning rate 4e-3 instead of 2e-3", ["lr=0.004"]),
    "nodrop": ("no dropout", ["model.dropout=0"]),
    "mfa+sub2+bn": ("MFA, subsample 2 (conv1d), BatchNorm", ["model.aggregate=mfa", "model.subsample=2",
                                                             "model.conv_norm=batch"]),
    "mfa+conv2d-sub2+bn": ("MFA, conv2d subsample 2, BatchNorm", BEST),
    "best+ramp": ("... and the margin ramp", BEST + ["margin_ramp=[0.2,0.6]"]),
    "best+rotary": ("... and rotary positions", BEST + ["model.position=rotary"]),
    "best+aam": ("... and AAM", BEST + ["model.head=aam"]),
    "best+lr4e-3": ("... and lr 4e-3", BEST + ["lr=0.004"]),
    "best+lr1e-3": ("... and lr 1e-3", BEST + ["lr=0.001"]),
    "best+warmup5%": ("... and a warm-up of 5 % of the steps instead of 10 %", BEST + ["warmup_steps=12"]),
    "best+warmup20%": ("... and a warm-up of 20 % of the steps", BEST + ["warmup_steps=50"]),
    "best+nodrop": ("... and no dropout", BEST + ["model.dropout=0"]),
    "best+nodrop+warmup20%": ("... and no dropout, a warm-up of 20 %", BEST + ["model.dropout=0", "warmup_steps=50"]),
    "best+nodrop+ff288": ("... and no dropout, FFN 288 (2 x d_model) instead of 576: today's default",
                          DEFAULT),
    "default+channel-pooling": ("today's default, and attentive pooling with a weight per frame and channel "
                                "(ECAPA-TDNN's, with global context)",
                                DEFAULT + ["model.pooling=channel"]),
    "default+late-stride": ("today's default, with the front end's time stride on its second convolution",
                            DEFAULT + ["model.time_stride=late"]),
    "default+lr3e-3": ("today's default with peak learning rate 3e-3",
                       DEFAULT + ["lr=0.003"]),
    "default+3-layers": ("today's default with 3 Conformer blocks instead of 4",
                         DEFAULT + ["model.n_layers=3"]),
    "default+stats-bn": ("today's default with BatchNorm of the pooled statistics (ECAPA-TDNN's)",
                         DEFAULT + ["model.stats_norm=batch"]),
    "default+mfa-dense": ("today's default with a pointwise layer, ReLU and BatchNorm on the aggregated "
                          "blocks before pooling (ECAPA-TDNN's)", DEFAULT + ["model.aggregate=mfa-dense"]),
    "default+stats-bn+3-layers": ("today's default with BatchNorm of the pooled statistics and 3 Conformer blocks",
                                  DEFAULT + ["model.stats_norm=batch", "model.n_layers=3"]),
    "best-sub1": ("MFA, conv2d at the full frame rate (subsample 1), BatchNorm", BEST + ["model.subsample=1"]),
    "best-bn": ("MFA, conv2d subsample 2, LayerNorm", ["model.aggregate=mfa", "model.frontend=conv2d",
                                                        "model.subsample=2"]),
    "best+ramp+aam": ("... and the margin ramp with AAM", BEST + ["margin_ramp=[0.2,0.6]", "model.head=aam"]),
}
STEPS = 250


def train_and_score(name: str, seed: int, args, data: Path) -> dict:
    out = args.work / "runs" / f"{name}-seed{seed}"
    if (done := common.finished_score(out)) is not None:
        return done
    flags = [a for setting in BEFORE + ROWS[name][1] for a in ("--set", setting)]
    device = ["--device", "cuda", "--set", "precision=fp32"] if args.device == "cuda" else []
    command = ["-m", "training.train", "--data", str(data), "--out", str(out), "--steps", str(args.steps),
               "--seed", str(seed), *common.short_budget(args.steps), "--no-progress", *device,
               *flags]
    out.parent.mkdir(parents=True, exist_ok=True)
    wall = run(command, out.with_suffix(".log"))
    result = {**score(out, data, args.device), "wall_s": wall, "command": "python " + " ".join(command)}
    (out / "score.json").write_text(json.dumps(result))
    print(f"{name} seed {seed}: top-1 {result['top1']:.4f}, EER {result['eer']:.4f}, {wall:.0f} s", flush=True)
    return result


def report(results: dict, args, wall_s: float) -> str:
    rows = []
    for name, (idea, flags) in ROWS.items():
        runs = [results[name, seed] for seed in args.seeds if (name, seed) in results]
        if not runs:
            continue
        rows.append([f"`{name}`", idea, len(runs), f"{runs[0]['params'] / 1e6:.2f} M",
                     common.mean_std([r["top1"] for r in runs]), common.mean_std([r["eer"] for r in runs]),
                     f"{statistics.fmean(r['wall_s'] for r in runs):.0f}",
                     "`" + " ".join(f"--set {f}" for f in flags) + "`" if flags else "(none)"])
    return "\n".join([
        common.header("Ablation: what makes the Conformer learn fast (CPU)", wall_s),
        f"Each row: `python -m training.train --data DATA --out RUN --steps {args.steps} --seed SEED "
        f"{' '.join(common.short_budget(args.steps))}` with the flags of the model before this study "
        f"(`{' '.join('--set ' + f for f in BEFORE)}`) and then the row's own flags; DATA is "
        "`../shared/speech` prepared as in bench.accuracy (612 held-out clips of 31 speakers). Top-1 and "
        "the clip-vs-clip EER on the held-out clips with the run's best.pt, mean ± standard deviation over "
        f"seeds {', '.join(map(str, args.seeds))}. "
        + ("Trained on the GPU in float32 (`--device cuda --set precision=fp32`). " if args.device == "cuda" else "")
        + f"Wall time: the whole training command, with {args.jobs} runs sharing the machine (compare wall "
        "times within this table only).\n",
        common.table(["row", "what changes", "seeds", "params", "top-1 %", "EER %", "wall (s)", "row's flags"], rows),
    ]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each with one thread when above 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--speech", type=Path, default=common.SPEECH)
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if args.jobs > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the training processes
    started = time.perf_counter()
    data = prepared(args.speech, args.work)
    jobs = [(name, seed) for seed in args.seeds for name in args.rows]
    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = pool.map(lambda job: train_and_score(*job, args, data), jobs)
        results = dict(zip(jobs, outcomes))
    common.write_section("ablation", report(results, args, time.perf_counter() - started), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
