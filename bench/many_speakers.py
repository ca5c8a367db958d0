"""What helps new voices: training recipes on the many-speaker corpus, measured on unseen speakers.

    python -m bench.many_speakers --data PREPARED --dev PREPARED_DEV [--rows NAME ...] [--seeds 0 1]
                                  [--steps 1000] [--jobs 2 | --processes 2] [--work DIR]

PREPARED is ../shared/speech and the corpus (../shared/corpora, built with its
build.sh) prepared together with speed copies, without the development speakers,
holding out the 31 speakers' test clips of the default model:

    python -m training.prepare ../shared/speech CORPUS DATA --test-list HELD_OUT_31 \\
        --exclude-from bench/dev_speakers.txt --speed 0.9,1.1

and PREPARED_DEV the calibration half of bench/dev_speakers.txt prepared with
`--test-fraction 0 --include-from`. Each row trains `python -m training.train`
with the default model's recipe (training/configs/default.json) for --steps on a view of PREPARED (a folder of links that keeps some speakers: without the
speed copies unless the row asks for them) with the row's flags, then scores its
best.pt: enroll-5 top-1, EER and minDCF (p_target 0.01) of clip-vs-speaker trials
on the unseen development speakers (`training.evaluate.enrollment`), and top-1
of the 31 speakers' held-out clips among all the model's classes. Runs already
scored in --work are reused. Writes the `many-speakers` section of bench/RESULTS.md.
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

from speaker_app.checkpoint import load_checkpoint
from speaker_app.inference import infer
from training.data import load_features, read_labelled, read_speakers
from training.evaluate import enrollment
from training.prepare import link_view

from . import common
from .accuracy import run, score

WORDS = ("speechcommands", "arabic_speechcommands")  # sources of 1-second single words
# name -> (what the row changes, which speakers it keeps, its --set flags)
ROWS = {
    "base": ("the recipe: every speaker (1 clip or more), a speaker drawn by the root of its clips, no speed copies",
             "all", []),
    "per-speaker": ("every speaker drawn equally often", "all", ["balance_speakers=1"]),
    "min3": ("only speakers with 3 clips or more", "min3", []),
    "speed": ("speed copies (0.9, 1.1) as new speakers", "speed", []),
    "no-words": ("without the 1-s word sources (Speech Commands, Arabic Speech Commands)", "no-words", []),
    "per-clip": ("every clip drawn equally often", "all", ["balance_speakers=0"]),
    "aam": ("additive angular margin (AAM) instead of AM", "all", ["model.head=aam"]),
    "ramp": ("margin ramped in (none until 20 % of the steps, full from 60 %)", "all", ["margin_ramp=[0.2,0.6]"]),
    "crop300": ("3-s crops instead of 1.2-s", "all", ["segment_frames=300"]),
    "crop200": ("2-s crops instead of 1.2-s (the recipe until 2026-12-03)", "all", ["segment_frames=200"]),
    "no-aug": ("no augmentation", "all", ["augment.bandlimit_prob=0", "augment.noise_prob=0", "augment.freq_masks=0",
                                         "augment.time_masks=0"]),
    "emb256": ("256-dim embedding instead of 192", "all", ["model.emb_dim=256"]),
}
STEPS = 1000
RECIPE = common.REPO / "training" / "configs" / "default.json"  # the default model's recipe, shortened to --steps


def keeps(view: str, speaker: str, n_clips: int) -> bool:
    base, speed = speaker.partition("@")[::2]
    if speed and view != "speed":
        return False
    if view == "min3":
        return n_clips >= 3
    if view == "no-words":
        return base.split("/")[0] not in WORDS
    return True


def make_view(source: Path, target: Path, view: str) -> Path:
    """A folder of links to `source`'s features keeping the speakers of `view` (and the held-out clips)."""
    return link_view(source, target, lambda speaker, n_clips: keeps(view, speaker, n_clips))


def new_voices(checkpoint_path: Path, dev: Path) -> dict:
    """Enroll-5 identification and clip-vs-speaker EER on the development speakers."""
    checkpoint = load_checkpoint(checkpoint_path)
    speakers = read_speakers(dev)
    items = read_labelled(dev, speakers)
    features = [load_features(dev / u.path, checkpoint.feature_config.n_mels) for u in items]
    outputs = infer(checkpoint.build_model(), features)
    return enrollment([speakers[u.speaker] for u in items], [u.path for u in items], outputs.embeddings, 5)


def run_folder(args, name: str, seed: int) -> Path:
    return args.work / "runs" / f"{name}-seed{seed}"


def train_and_score(name: str, seed: int, args) -> dict:
    out = run_folder(args, name, seed)
    if (done := common.finished_score(out)) is not None:
        return done
    idea, view, flags = ROWS[name]
    data = make_view(args.data, args.work / f"view-{view}", view)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}"] \
        if args.processes > 1 else []
    command = [*launcher, "-m", "training.train", "--data", str(data), "--out", str(out), "--config", str(RECIPE),
               "--steps", str(args.steps),
               "--seed", str(seed), "--set", f"warmup_steps={max(1, args.steps // 10)}",
               "--set", f"valid_every={args.steps // 2}", "--no-progress",
               *[a for flag in flags for a in ("--set", flag)]]
    out.parent.mkdir(parents=True, exist_ok=True)
    wall = run(command, out.with_suffix(".log"))
    result = {**score(out, data), **new_voices(out / "best.pt", args.dev), "wall_s": wall,
              "speakers": len(read_speakers(data)), "command": "python " + " ".join(command)}
    (out / "score.json").write_text(json.dumps(result))
    print(f"{name} seed {seed}: enroll-5 top-1 {result['enroll_top1']:.4f}, EER {result['eer']:.4f}, "
          f"31-speaker top-1 {result['top1']:.4f}, {wall:.0f} s", flush=True)
    return result


def report(results: dict, args, wall_s: float) -> str:
    rows = []
    for name, (idea, view, flags) in ROWS.items():
        runs = [results[name, seed] for seed in args.seeds if (name, seed) in results]
        if not runs:
            continue
        rows.append([f"`{name}`", idea, runs[0]["speakers"], len(runs), common.mean_std([r["enroll_top1"] for r in runs]),
                     common.mean_std([r["eer"] for r in runs]),
                     common.mean_std([r["min_dcf"] for r in runs], 1, 3) if "min_dcf" in runs[0] else "",
                     common.mean_std([r["top1"] for r in runs]), f"{statistics.fmean(r['wall_s'] for r in runs):.0f}",
                     f"view `{view}`" + (" " + " ".join(f"`--set {f}`" for f in flags) if flags else "")])
    return "\n".join([
        common.header("New voices: what helps on unseen speakers (CPU)", wall_s),
        f"Each row: `python -m training.train --data VIEW --out RUN --config training/configs/default.json --steps "
        f"{args.steps} --seed SEED --set warmup_steps={max(1, args.steps // 10)} --set valid_every={args.steps // 2}` "
        "plus the row's flags: the default model's recipe at a shorter budget; VIEW keeps the row's speakers of ../shared/speech and the corpus (../shared/corpora) prepared "
        "without the development speakers (see the module's docstring). Enroll-5 top-1, EER and minDCF: "
        f"clip-vs-speaker trials on the calibration half of the unseen development speakers ({args.dev_summary}); "
        "31-speaker top-1: the 612 held-out clips of ../shared/speech among all the model's classes. Mean ± standard "
        f"deviation over seeds {', '.join(map(str, args.seeds))}; {args.jobs} run(s) at a time, each in "
        f"{args.processes} process(es) (torchrun, one thread each: the same global batch), on the 2-core CPU.\n",
        common.table(["row", "what changes", "classes", "seeds", "enroll-5 top-1 %", "EER %", "minDCF", "31-speaker top-1 %",
                      "wall (s)", "data and flags"], rows),
    ]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.many_speakers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the prepared many-speaker folder (with speed copies)")
    parser.add_argument("--dev", type=Path, required=True, help="the prepared calibration development speakers")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each with one thread when above 1)")
    parser.add_argument("--processes", type=int, default=1,
                        help="data-parallel processes per run (torchrun, one thread each; 2 trains twice as fast on 2 cores)")
    parser.add_argument("--work", type=Path, default=Path("runs/many-speakers"))
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument("--scored-only", action="store_true",
                        help="train nothing: write the table from the runs of --work already scored")
    args = parser.parse_args(argv)
    if args.jobs > 1 or args.processes > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the training processes
    dev_items = read_labelled(args.dev, read_speakers(args.dev))
    args.dev_summary = f"{len(read_speakers(args.dev))} speakers, {len(dev_items)} clips"
    started = time.perf_counter()
    jobs = [(name, seed) for seed in args.seeds for name in args.rows]
    if args.scored_only:
        scored = {job: run_folder(args, *job) / "score.json" for job in jobs}  # unscored runs are left as they are
        results = {job: json.loads(path.read_text()) for job, path in scored.items() if path.exists()}
        if not results:
            raise SystemExit(f"error: no scored run of these rows and seeds under {args.work / 'runs'}")
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = dict(zip(jobs, pool.map(lambda job: train_and_score(*job, args), jobs)))
    common.write_section("many-speakers", report(results, args, time.perf_counter() - started), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
