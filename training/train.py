"""Train a speaker classifier on a course-layout data folder.

    python -m training.train --data DIR --out RUN_DIR [--config FILE] [--steps N]
                             [--device auto|cpu|cuda] [--model conformer|baseline] [--resume]
    torchrun --nproc_per_node=N -m training.train ...   (DistributedDataParallel)

Writes RUN_DIR/config.json, RUN_DIR/metrics.csv (one row per validation),
RUN_DIR/last.pt (with optimizer, scheduler and step) and RUN_DIR/best.pt (the
weights with the best validation accuracy).

The batches, crops and augmentation of step s depend only on (seed, s): every
process draws the same global batch and trains on its equal slice, so N
processes make the same updates as one, and a resumed run continues the
sequence. Dropout draws from a stream per process, seeded by (seed, step, rank).
Under torchrun only rank 0 validates, logs and writes, from the unwrapped model.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.files import atomic_write
from speaker_app.inference import length_batches
from speaker_app.model import SpeakerModel, build_model

from .augment import Augmenter
from .config import TrainConfig, baseline_config, from_dict, override, read_config_file
from .data import (AUGMENT, DROPOUT, DataError, FeatureBank, crop_batches, derived_seed, read_labelled,
                   read_speakers, sample_statistics, split_utterances, step_generator)

METRIC_FIELDS = ["step", "train_loss", "train_acc", "valid_loss", "valid_top1", "valid_top5", "lr",
                 "steps_per_s", "elapsed_s"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="course-layout data folder")
    parser.add_argument("--out", required=True, type=Path, help="run folder for checkpoints and metrics")
    parser.add_argument("--config", type=Path, help="JSON or YAML file of TrainConfig fields")
    parser.add_argument("--steps", type=int, help="total optimisation steps")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed for the split, initialisation and sampling")
    parser.add_argument("--model", choices=["conformer", "baseline"], help="baseline: the course sample model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config field, e.g. model.d_model=192 or augment.noise_prob=0")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig()
    if args.config:
        config = from_dict(TrainConfig, read_config_file(args.config))
    if args.model == "baseline":
        config = baseline_config(config)
    flags = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    config = replace(config, **{k: v for k, v in flags.items() if v is not None})
    return override(config, args.set)


def feature_config_of(root: Path) -> FeatureConfig:
    """prepare writes feature_config.json; the course data set uses the defaults."""
    path = root / "feature_config.json"
    return FeatureConfig.from_dict(json.loads(path.read_text())) if path.exists() else FeatureConfig()


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is available")
        self.device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            dist.init_process_group("nccl" if cuda else "gloo", device_id=self.device if cuda else None)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes (a collective: every rank must call it)."""
        if self.world > 1:
            dist.all_reduce(values)
        return values

    def wait(self):
        """Hold every rank here until rank 0 has validated and written its checkpoints."""
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1:
            dist.destroy_process_group()


def make_schedule(optimizer, config: TrainConfig):
    """Linear warm-up, then cosine decay to zero at config.steps."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: torch.nn.Module, config: TrainConfig):
    """AdamW; no weight decay on biases, norms and the margin head's class weights (normalised anyway)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (decay if parameter.dim() >= 2 and not name.startswith("head.weight") else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, network, batch, augment, generator, optimizer, scheduler, config, device):
    features, lengths, labels = (t.to(device, non_blocking=True) for t in batch)
    features = augment(features, lengths, generator)
    with autocast(device):
        logits = network(features, lengths, labels)
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    correct = (without_margin(model.head, logits.detach(), labels).argmax(-1) == labels).sum()
    return loss.detach(), correct


def without_margin(head, logits, labels):
    """Add the AM-softmax margin back, so that training accuracy means what validation accuracy means."""
    margin = getattr(head, "margin", 0.0) * getattr(head, "scale", 1.0)
    return logits + margin * F.one_hot(labels, logits.shape[-1]) if margin else logits


@torch.no_grad()
def evaluate(model: SpeakerModel, bank: FeatureBank, device, max_frames: int) -> dict:
    """Loss (without margin), top-1 and top-5 accuracy on full utterances."""
    was_training = model.training
    model.eval()
    total = {"loss": 0.0, "top1": 0, "top5": 0}
    for index in length_batches(bank.lengths.tolist(), max_frames):
        features, lengths, labels = (t.to(device) for t in bank.whole(index))
        with autocast(device):
            logits = model(features, lengths).float()
        total["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=-1).indices
        total["top1"] += (top[:, 0] == labels).sum().item()
        total["top5"] += (top == labels[:, None]).any(-1).sum().item()
    model.train(was_training)
    n = max(1, len(bank))
    return {"valid_loss": total["loss"] / n, "valid_top1": total["top1"] / n, "valid_top5": total["top5"] / n}


def window_means(loss_sum, correct_sum, steps: int, env: Distributed, batch_size: int) -> tuple[float, float]:
    """Training loss and accuracy over the last window, averaged over all ranks (global batch)."""
    totals = env.sum(torch.stack([loss_sum.double(), correct_sum.double()])).tolist()
    return totals[0] / (steps * env.world), totals[1] / (steps * batch_size)


def append_metrics(path: Path, row: dict):
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        handle.flush()
        os.fsync(handle.fileno())


def truncate_metrics(path: Path, step: int):
    """Drop rows logged after the checkpoint we resume from, so no step appears twice. The file is
    replaced atomically (a crash here leaves the old rows, never none); a row cut short by a crash
    has missing fields and goes too."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if None not in row.values() and int(row["step"]) <= step]
    text = io.StringIO()
    writer = csv.DictWriter(text, METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda handle: handle.write(text.getvalue().encode()))


def make_checkpoint(model, config, features, speakers, step, metrics, info, training_state=None):
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return Checkpoint(config.model, features, speakers, state, step, metrics,
                      {**info, "train_config": config.to_dict()}, training_state or {})


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


def main(argv=None) -> int:
    args = parse_args(argv)
    config = resolve_config(args)
    run = args.out
    last_path = run / "last.pt"
    resume = None
    if args.resume:
        try:
            resume = load_checkpoint(last_path, fallback=True)
        except CheckpointError as error:
            raise SystemExit(f"error: cannot resume: {error}")
        stored = from_dict(TrainConfig, resume.info["train_config"])
        config = replace(stored, steps=args.steps or stored.steps)
    elif last_path.exists():
        raise SystemExit(f"error: {run} already holds a run; pass --resume to continue it or choose another --out")

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
    except DataError as error:
        raise SystemExit(f"error: {error}")

    model = build_model(config.model, len(speakers))
    model.set_input_statistics(*(bank.statistics() if bank else sample_statistics(args.data, train, features.n_mels)))
    model.to(env.device)
    optimizer = make_optimizer(model, config)
    scheduler = make_schedule(optimizer, config)
    step, best = 0, -1.0
    if resume:
        model.load_state_dict(resume.state_dict)
        optimizer.load_state_dict(resume.training_state["optimizer"])
        scheduler.load_state_dict(resume.training_state["scheduler"])
        step, best = resume.step, resume.training_state["best_top1"]
        if env.main:
            truncate_metrics(run / "metrics.csv", step)
    elif env.main:
        run.mkdir(parents=True, exist_ok=True)
    if env.main:
        (run / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    network = model
    if env.world > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device] if env.device.type == "cuda" else None)
    if config.compile:
        network = torch.compile(network)
    torch.manual_seed(derived_seed(config.seed, step, DROPOUT, env.rank))
    batches = crop_batches(train, args.data, features.n_mels, config.batch_size, config.segment_frames,
                           config.seed, bank, config.workers, config.balance_speakers, step, env.rank, env.world)
    augment = Augmenter(config.augment, features, env.rank, env.world)
    info = {"data": str(args.data), "n_train": len(train), "n_valid": len(valid), "world_size": env.world}

    bar = tqdm(total=config.steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
               mininterval=1 if sys.stderr.isatty() else 30)
    window_loss = torch.zeros((), device=env.device)
    window_correct = torch.zeros((), device=env.device, dtype=torch.long)
    # elapsed_s counts training time across resumes
    window_steps, window_start = 0, time.time()
    started = window_start - (resume.metrics.get("elapsed_s", 0.0) if resume else 0.0)
    model.train()
    while step < config.steps:
        generator = step_generator(config.seed, step, AUGMENT)
        loss, correct = train_step(model, network, next(batches), augment, generator, optimizer, scheduler,
                                   config, env.device)
        window_loss += loss
        window_correct += correct
        window_steps += 1
        step += 1
        bar.update(1)
        if step % 50 == 0 and progress:
            bar.set_postfix(loss=f"{window_loss.item() / window_steps:.3f}",
                            acc=f"{window_correct.item() / (window_steps * config.batch_size // env.world):.3f}")
        if step % config.valid_every and step != config.steps:
            continue
        train_loss, train_acc = window_means(window_loss, window_correct, window_steps, env, config.batch_size)
        if env.main:
            elapsed = time.time() - window_start
            metrics = {"step": step, "train_loss": train_loss, "train_acc": train_acc,
                       **evaluate(model, valid_bank, env.device, config.valid_max_frames),
                       "lr": scheduler.get_last_lr()[0], "steps_per_s": window_steps / elapsed,
                       "elapsed_s": time.time() - started}
            append_metrics(run / "metrics.csv", metrics)
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
            if metrics["valid_top1"] > best:
                best = metrics["valid_top1"]
                save_checkpoint(make_checkpoint(model, config, features, speakers, step, metrics, info), run / "best.pt")
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best_top1": best}
            save_checkpoint(make_checkpoint(model, config, features, speakers, step, metrics, info, state), last_path,
                            keep_previous=True)
        env.wait()
        window_loss.zero_()
        window_correct.zero_()
        window_steps, window_start = 0, time.time()
    bar.close()
    if env.main:
        print(f"done: {step} steps, best valid top-1 {best:.4f}; checkpoints in {run}")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
