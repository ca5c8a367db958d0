"""Several processes train on the same global batches as one: sharded sampling and augmentation,
and torchrun (DDP over gloo on the CPU) against a single process, fresh and resumed."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from speaker_app.checkpoint import load_checkpoint
from speaker_app.features import FeatureConfig
from training.augment import AugmentConfig, Augmenter
from training.data import FeatureBank, crop_batches, read_labelled, read_speakers
from tests.conftest import ROOT

# A model small enough for a 2-core CI machine. Dropout is off: its masks come from a stream per
# process, so it is the one random part that differs between 1 and 2 processes. Batch norm (the
# default) computes its statistics over the global batch. The learning rate keeps the model learning
# for all 20 steps: once it has memorised the data, gradients vanish and Adam's steps follow float noise.
TINY = ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.ff_dim=64", "model.emb_dim=32",
        "model.frontend_channels=8", "model.subsample=2", "model.dropout=0", "segment_frames=64", "warmup_steps=4",
        "valid_every=5", "valid_fraction=0.25", "lr=0.003"]
# Float reduction order (2 slices of 4 and gradients averaged by all-reduce, against one batch of 8)
# is the only difference between the runs; observed relative differences are around 1e-6.
RTOL = 1e-3


def synthetic_course(root, speakers=3, per_speaker=8, seed=0):
    """A course-layout folder of log-mel-like tensors. Each speaker has its own spread per mel bin
    (the model's mean normalisation would remove a mere spectral shape)."""
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    metadata, names = {}, [f"id{10001 + s}" for s in range(speakers)]
    for s, name in enumerate(names):
        shape = -4 + 2 * torch.randn(40, generator=generator)
        spread = 0.2 + 2 * torch.rand(40, generator=generator)
        metadata[name] = []
        for i in range(per_speaker):
            length = int(torch.randint(40, 200, (), generator=generator))
            path = f"uttr-{s:04d}{i:028x}.pt"
            torch.save(shape + spread * torch.randn(length, 40, generator=generator), root / path)
            metadata[name].append({"feature_path": path, "mel_len": length})
    (root / "mapping.json").write_text(json.dumps({"speaker2id": {n: i for i, n in enumerate(names)},
                                                   "id2speaker": {str(i): n for i, n in enumerate(names)}}))
    (root / "metadata.json").write_text(json.dumps({"n_mels": 40, "speakers": metadata}))
    (root / "testdata.json").write_text(json.dumps({"n_mels": 40, "utterances": []}))
    return root


def first_batches(root, n, **kwargs):
    utterances = read_labelled(root, read_speakers(root))
    stream = crop_batches(utterances, root, 40, segment=64, seed=7, **kwargs)
    return [next(stream) for _ in range(n)]


def padded(batch, frames=64):
    features, lengths, labels = batch
    return torch.nn.functional.pad(features, (0, 0, 0, frames - features.shape[1])), lengths, labels


def test_ranks_slice_the_global_batch_in_memory_and_from_disk(tmp_path):
    root = synthetic_course(tmp_path)
    bank = FeatureBank(root, read_labelled(root, read_speakers(root)), 40, progress=False)
    whole = first_batches(root, 3, batch_size=8, bank=bank)
    for world in (2, 4):
        for source in (dict(bank=bank), dict(bank=None, workers=0)):
            parts = [first_batches(root, 3, batch_size=8, rank=r, world=world, **source) for r in range(world)]
            for step, expected in enumerate(whole):
                joined = [torch.cat(pieces) for pieces in zip(*(padded(p[step]) for p in parts))]
                for got, want in zip(joined, expected):
                    assert torch.equal(got, want)
    # a stream started at step 2 (a resumed run) continues the sequence
    assert all(torch.equal(a, b) for a, b in zip(first_batches(root, 1, batch_size=8, bank=bank, step=2)[0], whole[2]))
    assert not torch.equal(whole[0][0], whole[1][0])
    with pytest.raises(ValueError, match="divisible"):
        first_batches(root, 1, batch_size=6, bank=bank, world=4)


def test_augmentation_is_the_same_at_any_world_size():
    config = AugmentConfig(bandlimit_prob=0.5, noise_prob=0.5, time_width=10, short_prob=0.5, reverb_prob=0.5,
                           babble_prob=0.5)
    x = torch.randn(8, 60, 40) - 3
    lengths = torch.tensor([60, 50, 40, 30, 60, 20, 10, 45])
    x[torch.arange(60)[None, :] >= lengths[:, None]] = 0
    whole = Augmenter(config, FeatureConfig())(x, lengths, torch.Generator().manual_seed(3))
    parts = [Augmenter(config, FeatureConfig(), rank, 2)(x[4 * rank:4 * rank + 4], lengths[4 * rank:4 * rank + 4],
                                                         torch.Generator().manual_seed(3)) for rank in range(2)]
    assert all(torch.equal(torch.cat(part), all_) for part, all_ in zip(zip(*parts), whole))  # features, lengths
    assert not torch.equal(whole[0], x) and not torch.equal(whole[1], lengths)
    with pytest.raises(ValueError, match="rank"):
        Augmenter(config, FeatureConfig(), 2, 2)


def train(data, out, steps, processes=1, resume=False):
    command = [sys.executable, "-m", "training.train"]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "training.train"]
    command += ["--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "8",
                "--device", "cpu", "--no-progress", *(["--resume", "--extend"] if resume else [])]
    command += [arg for setting in TINY for arg in ("--set", setting)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done:") == 1, result.stdout  # only rank 0 reports
    return result.stdout


def metrics(run):
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available in this torch build")
def test_torchrun_matches_one_process_fresh_and_resumed(tmp_path):
    data = synthetic_course(tmp_path / "data")
    single, double = tmp_path / "single", tmp_path / "double"
    train(data, single, 10)
    train(data, single, 20, resume=True)
    train(data, double, 10, processes=2)
    train(data, double, 20, processes=2, resume=True)

    assert {p.name for p in double.iterdir()} == {"config.json", "metrics.csv", "best.pt", "last.pt", "last.pt.prev"}
    rows, expected = metrics(double), metrics(single)
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]  # one row per validation, none twice
    for row, want in zip(rows, expected):
        for key in ("train_loss", "valid_loss"):
            assert float(row[key]) == pytest.approx(float(want[key]), rel=RTOL), (key, row, want)
        assert float(row["train_acc"]) == pytest.approx(float(want["train_acc"]), abs=1 / 40)
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])  # it trains

    last, reference = (load_checkpoint(run / "last.pt") for run in (double, single))
    assert last.step == 20 and last.info["world_size"] == 2
    assert not any(name.startswith("module.") for name in last.state_dict)  # saved from the unwrapped model
    # Weights are compared through what they compute: parameters whose true gradient is zero (the
    # pooling score's bias, the key bias) are moved by Adam on float noise alone, differently per run.
    features = torch.randn(4, 80, 40, generator=torch.Generator().manual_seed(0)) - 4
    lengths = torch.tensor([80, 64, 50, 33])
    with torch.no_grad():
        got, want = (checkpoint.build_model()(features, lengths) for checkpoint in (last, reference))
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL)
