"""Speaker-count scale (issue 7): 6,000 speakers and 1 million utterances, measured on metadata.

    python -m bench.scale [--utterances 1000000] [--speakers 6000] [--files 3000] [--steps 5] > bench/SCALE.md

A VoxCeleb2-sized feature set (about 43 GB of float16 log-mels) does not fit
here, so the data set is metadata only: `mapping.json` and `metadata.json`
with lengths drawn like VoxCeleb's (log-normal, median 540 frames). Measured:

1. reading the metadata and making the speaker-stratified split (time, peak memory),
2. the AM-softmax head and its AdamW state at 6,000 classes against 600 (bytes),
3. training steps at batch 32, 128-frame crops, 6,000 classes, on this machine,
4. the from-disk DataLoader path on a few thousand real feature files (items per second).

Prints a markdown report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import START_LOAD, machine, memory_mb, versions

MEDIAN_FRAMES, SIGMA = 540, 0.45  # log-normal utterance lengths, clipped to [100, 6000] frames
COURSE = Path(__file__).resolve().parents[1] / "training" / "configs" / "course.json"


def synthetic_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(MEDIAN_FRAMES), SIGMA, n), 100, 6000).astype(np.int64)


def write_metadata(root: Path, n_utterances: int, n_speakers: int, seed: int = 0) -> np.ndarray:
    """Course-layout JSON for a data set of that size; no feature files. Speakers get uneven shares."""
    rng = np.random.default_rng(seed)
    share = rng.lognormal(0, 0.5, n_speakers)
    speaker = rng.choice(n_speakers, n_utterances, p=share / share.sum())
    lengths = synthetic_lengths(n_utterances, rng)
    names = [f"id{i:05d}" for i in range(n_speakers)]
    speakers = {name: [] for name in names}
    for i, (s, n) in enumerate(zip(speaker.tolist(), lengths.tolist())):
        speakers[names[s]].append({"feature_path": f"uttr-{i:032x}.pt", "mel_len": n})
    (root / "mapping.json").write_text(json.dumps({"speaker2id": {n: i for i, n in enumerate(names)},
                                                   "id2speaker": {str(i): n for i, n in enumerate(names)}}))
    with open(root / "metadata.json", "w") as handle:
        json.dump({"n_mels": 40, "speakers": speakers}, handle)
    return lengths


def read_and_split(root: str, queue):
    """In a fresh process: time and peak memory of what every rank does at start-up."""
    from training.data import global_batches, read_labelled, read_speakers, sampling_weights, split_utterances

    before = memory_mb()
    start = time.perf_counter()
    speakers = read_speakers(Path(root))
    utterances = read_labelled(Path(root), speakers)
    read_s = time.perf_counter() - start
    train, valid = split_utterances(utterances, 0.05, seed=0)
    split_s = time.perf_counter() - start - read_s
    held = memory_mb() - before
    stream = global_batches(sampling_weights(train, True), 32, seed=0)
    next(stream)
    start = time.perf_counter()
    for _ in range(1000):
        next(stream)
    draw_us = (time.perf_counter() - start) * 1000
    queue.put({"speakers": len(speakers), "utterances": len(utterances), "train": len(train), "valid": len(valid),
               "valid_speakers": len({u.speaker for u in valid}), "read_s": read_s, "split_s": split_s,
               "peak_mb": memory_mb(field="VmHWM") - before, "held_mb": held, "draw_us": draw_us})


def in_fresh_process(target, *args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def head_memory(n_classes: int) -> dict:
    """Bytes of the model and of its AM-softmax head after one AdamW step (weights, gradient, 2 moments)."""
    from speaker_app.model import ModelConfig
    from speaker_app.registry import build_model
    from training.config import TrainConfig
    from training.loop import make_optimizer

    config = TrainConfig(model=ModelConfig(**json.loads(COURSE.read_text())["model"]))
    model = build_model(config.model, n_classes)
    optimizer = make_optimizer(model, config)
    model(torch.randn(2, 64, 40), torch.tensor([64, 50]), torch.tensor([0, 1])).sum().backward()
    optimizer.step()
    weight = model.head.weight
    state = optimizer.state[weight]
    head = weight.nbytes + weight.grad.nbytes + sum(v.nbytes for v in state.values() if v.dim())
    total = sum(p.nbytes * 2 + sum(v.nbytes for v in optimizer.state[p].values() if v.dim()) for p in model.parameters())
    return {"classes": n_classes, "head_params": weight.numel(), "head_mb": head / 2**20,
            "model_params": sum(p.numel() for p in model.parameters()), "training_mb": total / 2**20,
            "logits_mb": 32 * n_classes * 4 * 3 / 2**20}  # logits, their gradient and the one-hot, batch 32


def step_time(n_classes: int, steps: int) -> float:
    """Seconds per training step (augmentation, forward, backward, AdamW) at batch 32, 128 frames."""
    from speaker_app.features import FeatureConfig
    from speaker_app.model import ModelConfig
    from speaker_app.registry import build_model
    from training.augment import AugmentConfig, Augmenter
    from training.config import TrainConfig
    from training.loop import make_optimizer, make_schedule, train_step

    course = json.loads(COURSE.read_text())
    config = TrainConfig(model=ModelConfig(**course["model"]), augment=AugmentConfig(**course["augment"]))
    model = build_model(config.model, n_classes).train()
    optimizer, generator = make_optimizer(model, config), torch.Generator().manual_seed(0)
    scheduler = make_schedule(optimizer, config)
    augment = Augmenter(config.augment, FeatureConfig())
    batch = (torch.randn(32, 128, 40) - 4, torch.full((32,), 128), torch.randint(n_classes, (32,)))
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        train_step(model, model, batch, augment, generator, optimizer, scheduler, config, torch.device("cpu"))
    return (time.perf_counter() - start) / steps


def write_feature_files(root: Path, n: int) -> int:
    """n (T, 40) float32 feature files in the course layout, lengths as above; 20 speakers."""
    lengths = synthetic_lengths(n, np.random.default_rng(1))
    speakers = {f"id{s:05d}": [] for s in range(20)}
    for i, length in enumerate(lengths.tolist()):
        torch.save(torch.randn(length, 40) - 4, root / f"uttr-{i:032x}.pt")
        speakers[f"id{i % 20:05d}"].append({"feature_path": f"uttr-{i:032x}.pt", "mel_len": length})
    (root / "mapping.json").write_text(json.dumps({"id2speaker": {str(i): n for i, n in enumerate(speakers)}}))
    (root / "metadata.json").write_text(json.dumps({"n_mels": 40, "speakers": speakers}))
    return int(lengths.sum())


def loader_rate(root: Path, workers: int, batches: int, in_memory: bool) -> float:
    """Items per second of crop_batches at batch 32, 128-frame crops, after 3 warm-up batches."""
    from training.data import FeatureBank, crop_batches, read_labelled, read_speakers

    utterances = read_labelled(root, read_speakers(root))
    bank = FeatureBank(root, utterances, 40, torch.float16, progress=False) if in_memory else None
    stream = crop_batches(utterances, root, 40, 32, 128, seed=0, bank=bank, workers=workers)
    for _ in range(3):
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    rate = batches * 32 / (time.perf_counter() - start)
    stream.close()
    return rate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=1_000_000)
    parser.add_argument("--speakers", type=int, default=6000)
    parser.add_argument("--files", type=int, default=3000, help="feature files written for the DataLoader timing")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per class count")
    args = parser.parse_args(argv)
    out = print
    out("# Scale: 6,000 speakers and 1M utterances\n")
    out(f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    out(f"- machine: {machine()}; {versions()}; load average at start {START_LOAD:.2f}")
    out(f"- command: `python -m bench.scale {shlex.join(sys.argv[1:] if argv is None else argv)}`\n")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        lengths = write_metadata(Path(tmp), args.utterances, args.speakers)
        made_s = time.perf_counter() - start
        size_mb = (Path(tmp) / "metadata.json").stat().st_size / 2**20
        meta = in_fresh_process(read_and_split, tmp)
    frames = int(lengths.sum())
    out("## Metadata and split (what every rank does at start-up)\n")
    out(f"Synthetic set: {meta['utterances']:,} utterances of {meta['speakers']:,} speakers, lengths log-normal "
        f"(median {int(np.median(lengths))} frames, mean {lengths.mean():.0f}), metadata.json {size_mb:.0f} MB "
        f"(written in {made_s:.1f} s).\n")
    out("| step | result |\n| --- | --- |")
    out(f"| read mapping.json + metadata.json | {meta['read_s']:.1f} s |")
    out(f"| stratified split (valid_fraction 0.05) | {meta['split_s']:.1f} s: {meta['train']:,} train, "
        f"{meta['valid']:,} valid, every speaker validated: {meta['valid_speakers'] == meta['speakers']} |")
    out(f"| memory: peak / held after the split | {meta['peak_mb']:.0f} MB / {meta['held_mb']:.0f} MB per process |")
    out(f"| draw one speaker-balanced global batch of 32 (indices + crop positions) | {meta['draw_us']:.0f} µs |")
    out(f"| features of the training set as float16 | {frames * 40 * 2 / 1e9:.1f} GB "
        f"({frames:,} frames): above the default `preload_gb` 8, so read from disk |\n")

    out("## AM-softmax head (course model: d_model 256, 6 layers, embedding 192)\n")
    out("| classes | head parameters | head + gradient + AdamW moments | whole model, same | "
        "batch-32 logits, gradient, one-hot |\n| --- | --- | --- | --- | --- |")
    for n in (600, args.speakers):
        h = head_memory(n)
        out(f"| {n:,} | {h['head_params']:,} | {h['head_mb']:.1f} MB | {h['model_params']:,} parameters, "
            f"{h['training_mb']:.0f} MB | {h['logits_mb']:.1f} MB |")

    out(f"\n## Training step on this CPU (batch 32, 128 frames, course model, {args.steps} timed steps)\n")
    out("| classes | s / step | steps / s | 70,000 steps |\n| --- | --- | --- | --- |")
    for n in (600, args.speakers):
        seconds = step_time(n, args.steps)
        out(f"| {n:,} | {seconds:.3f} | {1 / seconds:.2f} | {70000 * seconds / 3600:.1f} h |")

    with tempfile.TemporaryDirectory() as tmp:
        frames = write_feature_files(Path(tmp), args.files)
        out(f"\n## Batches of crops (batch 32, 128 frames): {args.files:,} feature files, "
            f"{frames * 40 * 4 / 2**20:.0f} MB float32, in the page cache\n")
        out("| path | items / s | batches / s |\n| --- | --- | --- |")
        for workers in (0, 2):
            rate = loader_rate(Path(tmp), workers, 40, in_memory=False)
            out(f"| from disk, DataLoader, {workers} workers | {rate:,.0f} | {rate / 32:.1f} |")
        rate = loader_rate(Path(tmp), 0, 200, in_memory=True)
        out(f"| in memory (FeatureBank, CPU) | {rate:,.0f} | {rate / 32:.1f} |")
    out("\n70,000 steps of 32 in 10 minutes need 3,733 items per second.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
