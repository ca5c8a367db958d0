"""Training throughput on a synthetic data set of the course's size, and the projected time for 70,000 steps.

    python -m bench.throughput [--devices cpu cuda] [--quick] [--utterances N] [--seconds S] [--results PATH]

The data set is made in memory: N utterances (default 69,000, as the course's)
with log-normal lengths (median 540 frames, sigma 0.5, clamped to 100..3000) of
random float16 features, in a `training.data.FeatureBank`, the store training
uses when the features fit in memory. Each setting runs the real training step
(`training.train.train_step`: crops from the bank, augmentation, forward,
AM-softmax or cross-entropy loss, backward, clipping, AdamW, schedule) for a
few warm-up steps and then for at least S seconds; segments/s = batch x steps/s,
and 70,000 steps take 70,000 / (steps/s). On a GPU the bank lives on the GPU
and the step runs under bf16 autocast, as training does, eagerly and under
`torch.compile` (the compiled rows say how long compiling took). CPU rows go to
the `throughput` section of bench/RESULTS.md, GPU rows to `throughput-gpu`
(with --quick: printed only, unless --results is given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from speaker_app import heap
from speaker_app.configs import from_dict
from speaker_app.ecapa import ecapa_config
from speaker_app.features import FeatureConfig
from speaker_app.model import ModelConfig
from speaker_app.registry import build_model
from training.augment import Augmenter
from training.config import TrainConfig
from training.data import FeatureBank, Utterance, crop_batches
from training.loop import make_optimizer, make_schedule, train_step

from . import common

COURSE_STEPS = 70_000
N_SPEAKERS = 600  # the course data set's
WARMUP_STEPS = 5


def settings() -> dict[str, TrainConfig]:
    """name -> config: the course's sample recipe (batch 32 x 128 frames) for ours, the baseline and
    ECAPA-TDNN, and our own course recipe (training/configs/course.json: a larger Conformer)."""
    course = from_dict(TrainConfig, json.loads((common.REPO / "training" / "configs" / "course.json").read_text()))
    sample = TrainConfig(steps=COURSE_STEPS, batch_size=32, segment_frames=128)
    return {
        "Conformer (ours, default config)": sample,
        "course baseline": replace(sample, model=ModelConfig.baseline()),
        "ECAPA-TDNN (264 channels)": replace(sample, model=ecapa_config()),
        "Conformer (ours, configs/course.json)": course,
    }


COMPILED = ("Conformer (ours, default config)", "Conformer (ours, configs/course.json)")  # also compiled on a GPU


def synthetic_bank(n: int, n_mels: int, seed: int) -> FeatureBank:
    """n utterances of random float16 log-mels with course-like lengths, labelled over N_SPEAKERS."""
    generator = torch.Generator().manual_seed(seed)
    lengths = (torch.randn(n, generator=generator) * 0.5).exp().mul(540).round().long().clamp(100, 3000)
    bank = FeatureBank(Path("."), [], n_mels, torch.float16, progress=False)
    bank.frames = torch.empty(int(lengths.sum()), n_mels, dtype=torch.float16)
    for start in range(0, len(bank.frames), 1 << 22):  # in slices: no float32 copy of the whole bank
        piece = bank.frames[start:start + (1 << 22)]
        piece.copy_(torch.randn(piece.shape, generator=generator).mul_(2).sub_(8))
    bank.lengths = lengths
    bank.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths[:-1].cumsum(0)])
    bank.labels = torch.randint(N_SPEAKERS, (n,), generator=generator)
    return bank


def measure(config: TrainConfig, bank: FeatureBank, device: torch.device, seconds: float, compile: bool) -> dict:
    """Steps per second of the real training step, after WARMUP_STEPS (which include compiling)."""
    torch.manual_seed(0)
    features = FeatureConfig()
    model = build_model(config.model, N_SPEAKERS).to(device).train()
    network = torch.compile(model) if compile else model
    optimizer = make_optimizer(model, config)
    scheduler = make_schedule(optimizer, config)
    utterances = [Utterance("", int(label), 0) for label in bank.labels.tolist()]  # for speaker-balanced weights
    batches = crop_batches(utterances, Path("."), features.n_mels, config.batch_size, config.segment_frames, 0, bank,
                           balance_speakers=config.balance_speakers)
    generator = torch.Generator().manual_seed(1)
    augment = Augmenter(config.augment, features)

    def step():
        loss, _ = train_step(model, network, next(batches), augment, generator, optimizer, scheduler, config, device)
        return loss

    started = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        step().item()
    warmup_s = time.perf_counter() - started
    steps, started = 0, time.perf_counter()
    while steps < 10 or time.perf_counter() - started < seconds:
        loss = step()
        steps += 1
    loss.item()  # waits for the device
    per_s = steps / (time.perf_counter() - started)
    return {"params": sum(p.numel() for p in model.parameters()), "steps_per_s": per_s, "steps": steps,
            "segments_per_s": per_s * config.batch_size, "warmup_s": warmup_s}


def hours(steps_per_s: float) -> str:
    h = COURSE_STEPS / steps_per_s / 3600
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def report(device: str, results: list[dict], configs: dict, n: int, bank: FeatureBank, seconds: float,
           wall_s: float) -> str:
    rows = []
    for r in results:
        c = configs[r["name"]]
        m = c.model
        shape = ("TDNN, 3 SE-Res2Net blocks" if m.kind == "ecapa"
                 else f"d{m.d_model} x {m.n_layers} layers, {m.frontend} subsample {m.subsample}" if m.kind == "conformer"
                 else f"d{m.d_model} x 1 layer")
        mode = f"compiled ({r['warmup_s']:.0f} s to compile and warm up)" if r["compile"] else "eager"
        rows.append([r["name"], mode, shape, f"{r['params'] / 1e6:.2f} M", f"{c.batch_size} x {c.segment_frames}",
                     f"{r['steps_per_s']:.2f}", f"{r['segments_per_s']:.0f}", hours(r["steps_per_s"])])
    gigabytes = bank.frames.numel() * 2 / 1e9
    where = (f"on the CPU, all threads (torch: {torch.get_num_threads()})" if device == "cpu"
             else f"on {common.gpu_name()}, the bank on the GPU, bf16 autocast")
    text = [common.header(f"Training throughput ({'CPU' if device == 'cpu' else 'GPU'})", wall_s),
            f"Synthetic data of the course's size: {n} utterances, log-normal lengths (median "
            f"{int(bank.lengths.median())} frames, mean {bank.lengths.float().mean():.0f}, sigma 0.5, clamped to "
            f"100..3000), {N_SPEAKERS} speakers, held in memory as a float16 FeatureBank ({gigabytes:.1f} GB). "
            f"Each row: the real `train_step` (speaker-balanced crops, augment, forward, loss, backward, clip, AdamW, "
            f"schedule) {where}; {WARMUP_STEPS} warm-up steps, then at least {seconds:g} s timed. 70,000 steps: the "
            f"projected wall time of the course's recipe length (70,000 / steps per s; validation and checkpoints "
            f"not counted).\n",
            common.table(["model", "mode", "shape", "params", "batch x frames", "steps/s", "segments/s",
                          "70,000 steps"], rows)]
    return "\n".join(text) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"],
                        help="where to measure (default: the CPU, and the GPU when there is one)")
    parser.add_argument("--models", nargs="+", help="only these rows (names as in the table)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small data, short timing, printed only")
    parser.add_argument("--utterances", type=int, help="synthetic utterances (default 69000, --quick 2000)")
    parser.add_argument("--seconds", type=float, help="timed seconds per row, at least (default 30, --quick 3)")
    parser.add_argument("--results", type=Path, help="file whose sections to rewrite (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    heap.reuse_big_blocks()  # as training.train does
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("error: --devices cuda, but no CUDA device is available")
    n = args.utterances or (2000 if args.quick else 69_000)
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    bank = synthetic_bank(n, FeatureConfig().n_mels, seed=0)
    configs = {name: c for name, c in settings().items() if not args.models or name in args.models}
    for device in devices:
        started, results = time.perf_counter(), []
        bank.to(torch.device(device))
        for name, config in configs.items():
            for compile in (False, True) if device == "cuda" and name in COMPILED else (False,):
                results.append({"name": name, "compile": compile,
                                **measure(config, bank, torch.device(device), seconds, compile)})
                print(f"{name} on {device}{' (compiled)' * compile}: {results[-1]['steps_per_s']:.2f} steps/s", flush=True)
        text = report(device, results, configs, n, bank, seconds, time.perf_counter() - started)
        section = "throughput" if device == "cpu" else "throughput-gpu"
        common.write_section(section, text, args.results or (None if args.quick else common.RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
