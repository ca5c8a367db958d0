"""Accuracy at equal budget: our Conformer, the course's sample transformer and ECAPA-TDNN.

    python -m bench.accuracy [--steps N] [--seeds 0 1] [--quick] [--results PATH]

Prepares ../shared/speech once (`training.prepare`, 20 % of each speaker's clips
held out, split seed 0), then trains each model with each seed through the real
command lines (`python -m training.train`, `--model baseline`, and
`python -m bench.ecapa`, which is the same loop with ECAPA-TDNN swapped in): same
features, crops, augmentation, optimizer, schedule, steps and batch (the
defaults of `training.train`, except the warm-up: a tenth of the steps rather
than 300, so that short budgets still decay the learning rate). Each run's
best.pt is scored on the held-out clips with training.evaluate's functions:
top-1/top-5 among all speakers, and the equal error rate of cosine scores over
all clip-vs-clip pairs of held-out clips (`pair_verification`). Writes the
`accuracy` section of bench/RESULTS.md (with --quick: prints it only, unless
--results is given).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speaker_app.checkpoint import load_checkpoint
from speaker_app.inference import infer
from training.evaluate import accuracy, labelled_from_data, pair_verification

from . import common

# name -> (run folder, module to run, extra flags)
MODELS = {
    "Conformer (ours)": ("conformer", "training.train", []),
    "course baseline": ("baseline", "training.train", ["--model", "baseline"]),
    "ECAPA-TDNN": ("ecapa", "training.train", ["--model", "ecapa"]),
}
# 3 models x 2 seeds within 30 minutes on this 2-core CPU: at 350 steps one seed took 16.5 min
# (ECAPA-TDNN 677 s, the Conformer 220 s, the baseline 68 s), so two took about 33; 250 fits.
STEPS, QUICK_STEPS = 250, 30


def run(args: list[str], log: Path) -> float:
    """Run `python args...` with its output in `log`; seconds it took."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, *args], cwd=common.REPO, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(args)} failed; see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - started


def prepared(speech: Path, work: Path) -> Path:
    """`speech` prepared in `work`/data (20 % of each speaker's clips held out, split seed 0), once."""
    data = work / "data"
    if not (data / "test_labels.csv").exists():
        work.mkdir(parents=True, exist_ok=True)
        run(["-m", "training.prepare", str(speech), str(data), "--test-fraction", "0.2", "--seed", "0", "--quiet"],
            work / "prepare.log")
    return data


def score(run_dir: Path, data: Path) -> dict:
    checkpoint = load_checkpoint(run_dir / "best.pt")
    model = checkpoint.build_model()
    _, rows = labelled_from_data(data, checkpoint, progress=False, split="test")
    names, _, features = zip(*rows)
    outputs = infer(model, list(features))
    result = {**accuracy(list(names), outputs.logits, checkpoint.speakers),
              **pair_verification(list(names), outputs.embeddings)}
    result["eer"], result["trials"] = result["pair_eer"], result["pair_trials"]
    result["speakers"] = len(set(names))
    result["params"] = sum(p.numel() for p in model.parameters())
    result["best_step"] = checkpoint.step
    return result


def mean(values) -> float:
    return statistics.fmean(values)


def spread(values) -> str:
    return f" ± {statistics.stdev(values) * 100:.1f}" if len(values) > 1 else ""


def report(results: dict, args, config: dict, wall_s: float) -> str:
    rows = []
    for (name, seed), r in results.items():
        rows.append([name, seed, f"{r['params'] / 1e6:.2f} M", f"{r['best_step']}/{args.steps}",
                     f"{r['wall_s']:.0f}", f"{r['top1'] * 100:.1f}", f"{r['top5'] * 100:.1f}", f"{r['eer'] * 100:.1f}"])
    summary = []
    for name in MODELS:
        runs = [r for (n, _), r in results.items() if n == name]
        summary.append([name, len(runs), f"{mean([r['wall_s'] for r in runs]):.0f}",
                        f"{mean([r['top1'] for r in runs]) * 100:.1f}{spread([r['top1'] for r in runs])}",
                        f"{mean([r['top5'] for r in runs]) * 100:.1f}{spread([r['top5'] for r in runs])}",
                        f"{mean([r['eer'] for r in runs]) * 100:.1f}{spread([r['eer'] for r in runs])}"])
    speech = "../shared/speech" if args.speech == common.SPEECH else args.speech
    first = next(iter(results.values()))
    sources = sorted(first.get("per_source", {}))
    per_source = [[name] + [f"{mean([r['per_source'][s]['top1'] for (n, _), r in results.items() if n == name]) * 100:.1f}"
                            for s in sources] for name in MODELS]
    top1 = {name: mean([r["top1"] for (n, _), r in results.items() if n == name]) for name in MODELS}
    ours, others = "Conformer (ours)", [n for n in MODELS if n != "Conformer (ours)"]
    verdict = "; ".join(f"{(top1[ours] - top1[n]) * 100:+.1f} points vs {n}" for n in others)
    beats = all(top1[ours] > top1[n] for n in others)
    text = [common.header("Accuracy at equal budget (CPU)", wall_s),
            f"Data: `{speech}` prepared by `python -m training.prepare {speech} DIR "
            f"--test-fraction 0.2 --seed 0` ({first['n']} held-out clips of {first['speakers']} speakers, "
            f"sources {', '.join(sources)}). Every model: {args.steps} steps, batch {config['batch_size']} x "
            f"{config['segment_frames']}-frame crops, AdamW lr {config['lr']:g}, {config['warmup_steps']} warm-up "
            f"steps then cosine decay, the default augmentation; the run's seed sets its train/valid split, "
            f"initialisation and sampling; scored with the run's best.pt (best validation top-1, checked every "
            f"{config['valid_every']} steps). Top-1/top-5: closed-set identification of the held-out clips "
            f"among all speakers. EER: cosine scores of unit embeddings over all {first['trials']} clip-vs-clip pairs of "
            f"held-out clips (`training.evaluate.pair_verification`). Wall time: the whole training command "
            f"(loading, training, validation, checkpoints).\n",
            "Mean over seeds (± standard deviation, in points):\n",
            common.table(["model", "seeds", "train wall (s)", "top-1 %", "top-5 %", "EER %"], summary), "",
            f"Conformer top-1 minus the baselines': {verdict} -> "
            f"{'ours is best in top-1' if beats else 'ours does NOT beat both baselines'} at this budget.\n",
            "Every run:\n",
            common.table(["model", "seed", "params", "best step", "train wall (s)", "top-1 %", "top-5 %", "EER %"], rows),
            "", "Top-1 % per source (mean over seeds):\n",
            common.table(["model"] + sources, per_source)]
    return "\n".join(text) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help=f"training steps per run (default {STEPS}, --quick {QUICK_STEPS})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few steps, results printed only")
    parser.add_argument("--speech", type=Path, default=common.SPEECH, help="folder of speaker folders of audio")
    parser.add_argument("--work", type=Path, help="folder for the prepared data and the runs (default: a new temporary one)")
    parser.add_argument("--results", type=Path, help="file whose `accuracy` section to rewrite (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    results_path = args.results or (None if args.quick else common.RESULTS)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    data, runs = work / "data", work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prepared(args.speech, work)
    results = {}
    for seed, (name, (slug, module, flags)) in itertools.product(args.seeds, MODELS.items()):
        out = runs / f"{slug}-seed{seed}"
        print(f"training {name}, seed {seed}, {args.steps} steps -> {out}", flush=True)
        wall = run(["-m", module, "--data", str(data), "--out", str(out), "--steps", str(args.steps),
                    "--seed", str(seed), "--set", f"warmup_steps={max(1, args.steps // 10)}", "--no-progress",
                    *flags], out.with_suffix(".log"))
        results[name, seed] = {**score(out, data), "wall_s": wall}
        r = results[name, seed]
        print(f"  {wall:.0f} s, top-1 {r['top1']:.4f}, top-5 {r['top5']:.4f}, EER {r['eer']:.4f}", flush=True)
    config = json.loads((out / "config.json").read_text())
    text = report(results, args, config, time.perf_counter() - started)
    common.write_section("accuracy", text, results_path)
    print(f"runs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
