"""Accuracy at equal budget: our Conformer, the course's sample transformer and ECAPA-TDNN.

    python -m bench.accuracy [--steps N] [--seeds 0 1] [--quick] [--results PATH] [--work DIR]

Prepares ../shared/speech once (`training.prepare`, 20 % of each speaker's clips
held out, split seed 0), then trains each model with each seed through the real
command line (`python -m training.train`, with `--model baseline` or
`--model ecapa`): same features, crops, augmentation, optimizer, schedule and
batch (the defaults of `training.train`, except `common.short_budget`: a tenth
of the steps as warm-up rather than 300, so that short budgets still decay the
learning rate, and 2-s crops, lr 2e-3 and a tenth of the clips held out for
validation, as every table here was measured).
Two budgets: equal steps (N each), and equal wall time: ECAPA-TDNN's N-step
training time, which our Conformer fills with N x (ECAPA's time / ours at N
steps) steps. Each run's best.pt is scored on the held-out clips with
training.evaluate's functions: top-1/top-5 among all speakers, and the equal
error rate of cosine scores over all clip-vs-clip pairs of held-out clips
(`pair_verification`). With --work, finished runs there are kept and not trained
again (their wall time is in each run's bench.json). Writes the `accuracy` section of bench/RESULTS.md (with
--quick: prints it only, unless --results is given).
"""

from __future__ import annotations

import argparse
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

# name -> (run folder, extra flags); ours twice: at N steps, and at ECAPA-TDNN's wall time for N steps
OURS, OURS_TIMED, ECAPA = "Conformer (ours)", "Conformer (ours), ECAPA-TDNN's wall time", "ECAPA-TDNN"
MODELS = {
    ECAPA: ("ecapa", ["--model", "ecapa"]),
    OURS: ("conformer", []),
    OURS_TIMED: ("conformer-timed", []),
    "course baseline": ("baseline", ["--model", "baseline"]),
}
# 3 models x 2 seeds within 30 minutes on this 2-core CPU: at 350 steps one seed took 16.5 min
# (ECAPA-TDNN 677 s, the Conformer 220 s, the baseline 68 s), so two took about 33; 250 fits.
STEPS, QUICK_STEPS = 250, 30


def train(out: Path, data: Path, steps: int, seed: int, flags: list[str]) -> float:
    """`python -m training.train` at the benchmark's settings; seconds it took."""
    return run(["-m", "training.train", "--data", str(data), "--out", str(out), "--steps", str(steps), "--seed", str(seed),
                *common.short_budget(steps), "--no-progress", *flags], out.with_suffix(".log"))


def trained(out: Path, data: Path, steps: int, seed: int, flags: list[str]) -> float:
    """`train`, unless `out` holds a finished run of `steps` steps from an earlier call (its
    wall time is kept in `out`/bench.json), so an interrupted benchmark resumes where it stopped."""
    record = out / "bench.json"
    if record.exists() and (out / "best.pt").exists():
        kept = json.loads(record.read_text())
        if kept["steps"] == steps and kept["seed"] == seed:
            return kept["wall_s"]
    wall = train(out, data, steps, seed, flags)
    record.write_text(json.dumps({"steps": steps, "seed": seed, "wall_s": wall}) + "\n")
    return wall


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


def score(run_dir: Path, data: Path, device: str = "cpu") -> dict:
    checkpoint = load_checkpoint(run_dir / "best.pt")
    model = checkpoint.build_model().to(device)
    _, rows = labelled_from_data(data, checkpoint, progress=False, split="test")
    names, _, features = zip(*rows)
    outputs = infer(model, list(features), device=device)
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
        rows.append([name, seed, f"{r['params'] / 1e6:.2f} M", f"{r['best_step']}/{r['steps']}",
                     f"{r['wall_s']:.0f}", f"{r['top1'] * 100:.1f}", f"{r['top5'] * 100:.1f}", f"{r['eer'] * 100:.1f}"])
    summary = []
    for name in MODELS:
        runs = [r for (n, _), r in results.items() if n == name]
        summary.append([name, len(runs), " / ".join(sorted({str(r["steps"]) for r in runs})),
                        f"{mean([r['wall_s'] for r in runs]):.0f}",
                        f"{mean([r['top1'] for r in runs]) * 100:.1f}{spread([r['top1'] for r in runs])}",
                        f"{mean([r['top5'] for r in runs]) * 100:.1f}{spread([r['top5'] for r in runs])}",
                        f"{mean([r['eer'] for r in runs]) * 100:.1f}{spread([r['eer'] for r in runs])}"])
    speech = "../shared/speech" if args.speech == common.SPEECH else args.speech
    first = next(iter(results.values()))
    sources = sorted(first.get("per_source", {}))
    per_source = [[name] + [f"{mean([r['per_source'][s]['top1'] for (n, _), r in results.items() if n == name]) * 100:.1f}"
                            for s in sources] for name in MODELS]
    top1 = {name: mean([r["top1"] for (n, _), r in results.items() if n == name]) for name in MODELS}
    verdict = (f"at equal steps, ours {(top1[OURS] - top1[ECAPA]) * 100:+.1f} points against ECAPA-TDNN and "
               f"{(top1[OURS] - top1['course baseline']) * 100:+.1f} against the course baseline; at ECAPA-TDNN's wall "
               f"time, ours {(top1[OURS_TIMED] - top1[ECAPA]) * 100:+.1f} points against ECAPA-TDNN -> ours is "
               f"{'at or above' if top1[OURS_TIMED] >= top1[ECAPA] else 'BELOW'} ECAPA-TDNN at equal wall time")
    text = [common.header("Accuracy at equal budget (CPU)", wall_s),
            "Mean over seeds (± standard deviation, in points):\n",
            common.table(["model", "seeds", "steps", "train wall (s)", "top-1 %", "top-5 %", "EER %"], summary), "",
            f"Top-1: {verdict}.",
            common.MORE,
            f"Data: `{speech}` prepared by `python -m training.prepare {speech} DIR "
            f"--test-fraction 0.2 --seed 0` ({first['n']} held-out clips of {first['speakers']} speakers, "
            f"sources {', '.join(sources)}). Every model: {args.steps} steps (and ours again for as many steps as fit "
            f"ECAPA-TDNN's wall time at {args.steps}, measured in the same run with the same seed), batch {config['batch_size']} x "
            f"{config['segment_frames']}-frame crops, AdamW lr {config['lr']:g}, {config['warmup_steps']} warm-up "
            f"steps then cosine decay, the default augmentation; the run's seed sets its train/valid split, "
            f"initialisation and sampling; scored with the run's best.pt (best validation top-1, checked every "
            f"{config['valid_every']} steps). Top-1/top-5: closed-set identification of the held-out clips "
            f"among all speakers. EER: cosine scores of unit embeddings over all {first['trials']} clip-vs-clip pairs of "
            f"held-out clips (`training.evaluate.pair_verification`). Wall time: the whole training command "
            f"(loading, training, validation, checkpoints).\n",
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
    for seed in args.seeds:
        for name, (slug, flags) in MODELS.items():
            steps = args.steps
            if name == OURS_TIMED:  # fill ECAPA-TDNN's time at the step rate ours just showed
                steps = max(args.steps, round(args.steps * results[ECAPA, seed]["wall_s"] / results[OURS, seed]["wall_s"]))
            out = runs / f"{slug}-seed{seed}"
            print(f"training {name}, seed {seed}, {steps} steps -> {out}", flush=True)
            wall = trained(out, data, steps, seed, flags)
            results[name, seed] = r = {**score(out, data), "wall_s": wall, "steps": steps}
            print(f"  {wall:.0f} s, top-1 {r['top1']:.4f}, top-5 {r['top5']:.4f}, EER {r['eer']:.4f}", flush=True)
    config = json.loads((out / "config.json").read_text())
    text = report(results, args, config, time.perf_counter() - started)
    common.write_section("accuracy", text, results_path)
    print(f"runs kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
