"""The training loop and its parts: optimizer, schedules, one step, validation, metrics, checkpoints.

`fit` runs steps until `config.steps`, validating every `config.valid_every`
steps on rank 0, which writes `metrics.csv`, `best.pt` and `last.pt`. The
command line that wires it up (arguments, data, model, processes) is
`training/train.py`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from speaker_app.checkpoint import Checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.files import atomic_write
from speaker_app.inference import length_batches
from speaker_app.model import SpeakerModel

from .augment import Augmenter
from .config import TrainConfig
from .data import AUGMENT, FeatureBank, step_generator
from .distributed import Distributed

METRIC_FIELDS = ["step", "train_loss", "train_acc", "valid_loss", "valid_top1", "valid_top5", "lr",
                 "steps_per_s", "elapsed_s"]


def make_optimizer(model: torch.nn.Module, config: TrainConfig):
    """AdamW; no weight decay on biases, norms and the margin head's class weights (normalised anyway)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (decay if parameter.dim() >= 2 and not name.startswith("head.weight") else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def make_schedule(optimizer, config: TrainConfig):
    """Linear warm-up, then cosine decay to zero at config.steps."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def margin_at(step: int, config: TrainConfig) -> float:
    """The margin schedule: none before `margin_ramp[0]` of the steps, the full margin from
    `margin_ramp[1]` on, linear between (WeSpeaker ramps it in the same way); (0, 0) keeps it full."""
    start, end = (fraction * config.steps for fraction in config.margin_ramp)
    ramp = 1.0 if step >= end else 0.0 if step < start else (step - start) / (end - start)
    return config.model.margin * ramp


def autocast(device: torch.device, precision: str = "bf16"):
    """bf16 autocast on CUDA (unless precision is "fp32"); a no-op on the CPU."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, network, batch, augment, generator, optimizer, scheduler, config, device, context=None):
    """One optimisation step on a (features, lengths, labels) batch -> loss and correct count (tensors, no sync).
    `context` wraps the forward pass (default: the autocast of the config's precision on `device`)."""
    features, lengths, labels = (t.to(device, non_blocking=True) for t in batch)
    features, labels = augment.new_speakers(features, labels, generator)
    features, lengths = augment(features, lengths, generator)
    with context if context is not None else autocast(device, config.precision):
        logits = network(features, lengths, labels)
        extra = 0.0
        if isinstance(logits, tuple):  # training.distill.Distilled: the student's logits and its distillation loss
            logits, extra = logits
        loss = F.cross_entropy(logits.float(), labels) + extra
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    # Training accuracy without the margin means what validation accuracy means.
    correct = (model.head.without_margin(logits.detach(), labels).argmax(-1) == labels).sum()
    return loss.detach(), correct


@torch.no_grad()
def evaluate(model: SpeakerModel, bank: FeatureBank, device, max_frames: int, precision: str = "bf16",
             classes: int | None = None) -> dict:
    """Loss (without margin), top-1 and top-5 accuracy on full utterances, over the first `classes` classes
    (default all); None for an empty bank (`valid_fraction` 0: no validation split)."""
    if not len(bank):
        return {"valid_loss": None, "valid_top1": None, "valid_top5": None}
    was_training = model.training
    model.eval()
    total = {"loss": 0.0, "top1": 0, "top5": 0}
    for index in length_batches(bank.lengths.tolist(), max_frames):
        features, lengths, labels = (t.to(device) for t in bank.whole(index))
        with autocast(device, precision):
            logits = model(features, lengths).float()[:, :classes]
        total["loss"] += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=-1).indices
        total["top1"] += (top[:, 0] == labels).sum().item()
        total["top5"] += (top == labels[:, None]).any(-1).sum().item()
    model.train(was_training)
    n = len(bank)
    return {"valid_loss": total["loss"] / n, "valid_top1": total["top1"] / n, "valid_top5": total["top5"] / n}


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


@dataclass
class Run:
    """What the loop needs beside the model: where and what it writes, and where it starts."""
    out: Path
    config: TrainConfig
    features: FeatureConfig
    speakers: list[str]
    info: dict  # provenance stored in every checkpoint
    step: int = 0
    best: float = -1.0  # best validation top-1 so far
    elapsed: float = 0.0  # training seconds of earlier sessions (resumes)
    real: int | None = None  # validated over the first `real` speakers (the rest: speaker augmentation's); None: all

    def checkpoint(self, model, metrics: dict, training_state: dict | None = None) -> Checkpoint:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return Checkpoint(self.config.model, self.features, self.speakers, state, self.step, metrics,
                          {**self.info, "train_config": self.config.to_dict()}, training_state or {})


def validate_and_save(run: Run, model, optimizer, scheduler, valid_bank, device, window: dict) -> dict:
    """Rank 0: validate, log a metrics row, write best.pt when it is at least as good as before and
    last.pt always. A tie goes to the later step: the same validation accuracy after more updates at
    a lower learning rate (a small validation split ties often). Without a validation split, best.pt
    is the latest step."""
    metrics = {"step": run.step, "train_loss": window["loss"], "train_acc": window["acc"],
               **evaluate(model, valid_bank, device, run.config.valid_max_frames, run.config.precision, run.real),
               "lr": scheduler.get_last_lr()[0], "steps_per_s": window["steps_per_s"],
               "elapsed_s": window["elapsed_s"]}
    append_metrics(run.out / "metrics.csv", metrics)
    top1 = metrics["valid_top1"]
    if top1 is None or top1 >= run.best:
        if top1 is not None:
            run.best = top1
        save_checkpoint(run.checkpoint(model, metrics), run.out / "best.pt")
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best_top1": run.best}
    save_checkpoint(run.checkpoint(model, metrics, state), run.out / "last.pt", keep_previous=True)
    return metrics


def fit(run: Run, model: SpeakerModel, network, optimizer, scheduler, batches, augment: Augmenter,
        valid_bank: FeatureBank, env: Distributed, progress: bool):
    """Train from `run.step` to `run.config.steps`. `network` is `model` itself, or its DDP/compiled
    wrapper; checkpoints come from the unwrapped `model`."""
    config, device = run.config, env.device
    bar = tqdm(total=config.steps, initial=run.step, disable=not progress, unit="step", dynamic_ncols=True,
               mininterval=1 if sys.stderr.isatty() else 30)
    window_loss = torch.zeros((), device=device)
    window_correct = torch.zeros((), device=device, dtype=torch.long)
    window_steps, window_start = 0, time.time()
    started = window_start - run.elapsed
    model.train()
    while run.step < config.steps:
        if hasattr(model.head, "set_margin"):
            model.head.set_margin(margin_at(run.step, config))
        generator = step_generator(config.seed, run.step, AUGMENT)
        loss, correct = train_step(model, network, next(batches), augment, generator, optimizer, scheduler,
                                   config, device)
        window_loss += loss
        window_correct += correct
        window_steps += 1
        run.step += 1
        bar.update(1)
        if run.step % 50 == 0 and progress:  # the only host syncs between validations
            bar.set_postfix(loss=f"{window_loss.item() / window_steps:.3f}",
                            acc=f"{window_correct.item() / (window_steps * config.batch_size // env.world):.3f}")
        if run.step % config.valid_every and run.step != config.steps:
            continue
        # Training loss and accuracy of the window, averaged over all ranks (the global batch).
        totals = env.sum(torch.stack([window_loss.double(), window_correct.double()])).tolist()
        window = {"loss": totals[0] / (window_steps * env.world), "acc": totals[1] / (window_steps * config.batch_size),
                  "steps_per_s": window_steps / (time.time() - window_start), "elapsed_s": time.time() - started}
        if env.main:
            metrics = validate_and_save(run, model, optimizer, scheduler, valid_bank, device, window)
            bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in metrics.items() if v is not None))
        env.wait()
        window_loss.zero_()
        window_correct.zero_()
        window_steps, window_start = 0, time.time()
    bar.close()
