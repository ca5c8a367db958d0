"""Train a speaker classifier on a course-layout data folder.

    python -m training.train --data DIR --out RUN_DIR [--config FILE] [--steps N] [--set KEY=VALUE]
                             [--device auto|cpu|cuda] [--model conformer|baseline|ecapa] [--init CKPT]
                             [--resume [--extend]]
    torchrun --nproc_per_node=N -m training.train ...   (DistributedDataParallel)

Writes RUN_DIR/config.json, RUN_DIR/metrics.csv (one row per validation),
RUN_DIR/last.pt (with optimizer, scheduler and step) and RUN_DIR/best.pt (the
weights with the best validation accuracy, the latest of ties; with valid_fraction
0 there is no validation and best.pt is the last step).

The batches, crops and augmentation of step s depend only on (seed, s): every
process draws the same global batch and trains on its equal slice, so N
processes make the same updates as one, and a resumed run continues the
sequence. Dropout draws from a stream per process, seeded by (seed, step, rank).
Under torchrun only rank 0 validates, logs and writes, from the unwrapped model.

`--resume` continues the run in RUN_DIR with its stored configuration: flags
that would change it are refused, so an interrupted command can be repeated
with `--resume` added. `--resume --extend --steps N` lengthens a run to N
steps: the cosine schedule is stretched to N, so the learning rate rises from
where it was to the new curve (the command says by how much).

`--init CKPT` fine-tunes: the run starts from the checkpoint's model and
weights (the default model, say, on the course data); each speaker the
checkpoint knows keeps its classifier row, new speakers start fresh.

This module only parses and wires; the loop is `training/loop.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from speaker_app import heap
from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from speaker_app.configs import from_dict
from speaker_app.ecapa import ecapa_config
from speaker_app.features import FeatureConfig
from speaker_app.model import ModelConfig
from speaker_app.registry import build_model

from .augment import AugmentConfig, Augmenter
from .config import TrainConfig, override, read_config_file
from .data import DROPOUT, DataError, FeatureBank, crop_batches, derived_seed, read_labelled, read_speakers, \
    sample_statistics, split_utterances
from .distill import Distilled, load_teacher
from .distributed import Distributed
from .loop import Run, fit, make_optimizer, make_schedule, truncate_metrics


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="course-layout data folder")
    parser.add_argument("--out", required=True, type=Path, help="run folder for checkpoints and metrics")
    parser.add_argument("--config", type=Path, help="JSON or YAML file of TrainConfig fields")
    parser.add_argument("--steps", type=int, help="total optimisation steps")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed for the split, initialisation and sampling")
    parser.add_argument("--model", choices=["conformer", "baseline", "ecapa"],
                        help="baseline: the course sample model; ecapa: ECAPA-TDNN (needs speechbrain)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config field, e.g. model.d_model=192 or augment.noise_prob=0")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--init", type=Path, metavar="CKPT",
                        help="fine-tune: start from this checkpoint's model and weights (speakers' classifier rows by "
                             "name, new speakers' rows fresh)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--extend", action="store_true", help="with --resume: lengthen the run to --steps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Defaults (or `base`), then --config, then --model, then the flags, then --set."""
    config = base or TrainConfig()
    if args.config:
        config = from_dict(TrainConfig, read_config_file(args.config))
    if args.model == "baseline":
        config = replace(config, model=ModelConfig.baseline(config.model.n_mels))
    elif args.model == "ecapa":
        config = replace(config, model=replace(ecapa_config(config.model.n_mels), scale=config.model.scale,
                                               margin=config.model.margin, emb_dim=config.model.emb_dim))
    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    config = replace(config, **{k: v for k, v in flags.items() if v is not None})
    return override(config, args.set)


def flatten(data: dict, prefix: str = "") -> dict:
    items = {}
    for key, value in data.items():
        items.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return items


def resumed_config(args: argparse.Namespace, stored: TrainConfig) -> TrainConfig:
    """The stored configuration of the run, after checking that no flag would change it."""
    requested = resolve_config(args, base=stored)
    before, after = flatten(stored.to_dict()), flatten(requested.to_dict())
    changed = [f"{key}: run has {before[key]!r}, flags say {after[key]!r}"
               for key in before if key != "steps" and before[key] != after[key]]
    if changed:
        raise SystemExit("error: --resume continues a run with its own configuration; these flags would change it:\n  "
                         + "\n  ".join(changed) + "\nstart a new run (another --out) to train with them")
    if requested.steps != stored.steps and not args.extend:
        raise SystemExit(f"error: the run was made for {stored.steps} steps; to lengthen it to {requested.steps}, "
                         "add --extend (the cosine schedule is stretched to the new length)")
    if args.extend and requested.steps < stored.steps:
        raise SystemExit(f"error: --extend lengthens a run; {requested.steps} is fewer than its {stored.steps} steps")
    return requested


def feature_config_of(root: Path) -> FeatureConfig:
    """prepare writes feature_config.json; the course data set uses the defaults."""
    path = root / "feature_config.json"
    return FeatureConfig.from_dict(json.loads(path.read_text())) if path.exists() else FeatureConfig()


def load_data(root: Path, config: TrainConfig, features: FeatureConfig, device, progress: bool):
    speakers = read_speakers(root)
    train, valid = split_utterances(read_labelled(root, speakers), config.valid_fraction, config.seed)
    gigabytes = sum(u.length for u in train) * features.n_mels * 2 / 1e9
    bank = None
    if gigabytes <= config.preload_gb:
        bank = FeatureBank(root, train, features.n_mels, torch.float16, progress)
        if device.type == "cuda":
            bank.to(device)
    valid_bank = FeatureBank(root, valid, features.n_mels, torch.float16, progress)
    return speakers, train, valid, bank, valid_bank


def pseudo_speakers(speakers: list[str], augment: AugmentConfig) -> list[str]:
    """Speaker augmentation's classes after the real speakers': one per warp factor and speaker, in the order
    `Augmenter.new_speakers` labels them. Fine-tuning from such a run keeps only the rows of real speakers."""
    if augment.warp_prob <= 0:
        return []
    return [f"{name}~warp{factor:g}" for factor in augment.warp_factors for name in speakers]


def initialise_from(model: torch.nn.Module, checkpoint: Checkpoint, speakers: list[str]) -> int:
    """Copy `checkpoint`'s weights into `model` (same architecture; its input statistics too). The
    classifier's rows follow the speakers' names: a speaker the checkpoint knows gets its row, a new
    one keeps its fresh row. Returns how many of `speakers` the checkpoint knew."""
    state = dict(checkpoint.state_dict)
    head = model.state_dict()["head.weight"].clone()
    known = {name: i for i, name in enumerate(checkpoint.speakers)}
    rows = [(i, known[name]) for i, name in enumerate(speakers) if name in known]
    if rows:
        mine, theirs = map(list, zip(*rows))
        head[mine] = state["head.weight"][theirs].to(head)
    state["head.weight"] = head
    model.load_state_dict(state)
    return len(rows)


def load_resume(args) -> Checkpoint | None:
    last = args.out / "last.pt"
    if not args.resume:
        if last.exists():
            raise SystemExit(f"error: {args.out} already holds a run; pass --resume to continue it or choose another --out")
        if args.extend:
            raise SystemExit("error: --extend lengthens a run being resumed; add --resume")
        return None
    try:
        return load_checkpoint(last, fallback=True)
    except CheckpointError as error:
        raise SystemExit(f"error: cannot resume: {error}")


def main(argv=None) -> int:
    args = parse_args(argv)
    resume = load_resume(args)
    try:
        config = (resumed_config(args, from_dict(TrainConfig, resume.info["train_config"])) if resume
                  else resolve_config(args))
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    if config.model.members > 1:
        raise SystemExit("error: an ensemble is not trained: train its members one by one, then assemble them "
                         "with training.ensemble")
    init = None
    if args.init and not resume:  # a resumed fine-tuning run goes on from its own last.pt
        try:
            init = load_checkpoint(args.init)
        except CheckpointError as error:
            raise SystemExit(f"error: --init: {error}")
        if init.model_config.members > 1:
            raise SystemExit(f"error: --init: {args.init} is an ensemble; fine-tune one of its members' checkpoints")
        config = replace(config, model=init.model_config)  # the model is the checkpoint's

    heap.reuse_big_blocks()  # every step frees and reallocates the same big activations
    env = Distributed(args.device)
    progress = env.main and not args.no_progress
    if config.batch_size % env.world:
        raise SystemExit(f"error: batch size {config.batch_size} is not divisible by {env.world} processes")
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    features = feature_config_of(args.data)
    if features.n_mels != config.model.n_mels:
        raise SystemExit(f"error: the data has {features.n_mels} mel bins, the model expects {config.model.n_mels}")
    try:
        speakers, train, valid, bank, valid_bank = load_data(args.data, config, features, env.device, progress)
        classes = speakers + pseudo_speakers(speakers, config.augment)
        model = build_model(config.model, len(classes))
    except (DataError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    model.set_input_statistics(*(bank.statistics() if bank else sample_statistics(args.data, train, features.n_mels)))
    model.to(env.device)
    optimizer = make_optimizer(model, config)
    scheduler = make_schedule(optimizer, config)
    info = {"data": str(args.data), "n_train": len(train), "n_valid": len(valid), "world_size": env.world}
    if init is not None:
        known = initialise_from(model, init, classes)
        info["init"] = {"checkpoint": str(args.init), "step": init.step, "speakers_known": known}
        if env.main:
            print(f"starting from {args.init} (step {init.step}); it knew {known} of the {len(speakers)} speakers")
    run = Run(args.out, config, features, classes, info, real=len(speakers))
    if resume:
        model.load_state_dict(resume.state_dict)
        optimizer.load_state_dict(resume.training_state["optimizer"])
        before = optimizer.param_groups[0]["lr"]
        scheduler.load_state_dict(resume.training_state["scheduler"])
        run.step, run.best = resume.step, resume.training_state["best_top1"]
        run.elapsed = resume.metrics.get("elapsed_s", 0.0)
        if args.extend and env.main:
            after = config.lr * scheduler.lr_lambdas[0](run.step)
            print(f"extending to {config.steps} steps: the learning rate goes from {before:.3g} to {after:.3g}")
        if env.main:
            truncate_metrics(args.out / "metrics.csv", run.step)
    elif env.main:
        args.out.mkdir(parents=True, exist_ok=True)
    if env.main:
        (args.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    network = model
    if config.teacher:
        network = Distilled(model, load_teacher(config.teacher, env.device), config.distill_weight)
    if env.world > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device] if env.device.type == "cuda" else None)
    if config.compile:
        network = torch.compile(network)
    torch.manual_seed(derived_seed(config.seed, run.step, DROPOUT, env.rank))
    batches = crop_batches(train, args.data, features.n_mels, config.batch_size, config.segment_frames,
                           config.seed, bank, config.workers, config.balance_speakers, run.step, env.rank, env.world,
                           config.source_shares, speakers, config.same_source)
    augment = Augmenter(config.augment, features, env.rank, env.world, len(speakers))
    fit(run, model, network, optimizer, scheduler, batches, augment, valid_bank, env, progress)
    if env.main:
        best = f"best valid top-1 {run.best:.4f}" if valid else "no validation split: best.pt is the last step"
        print(f"done: {run.step} steps, {best}; checkpoints in {args.out}")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
