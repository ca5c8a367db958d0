"""The CUDA paths: the feature bank on the GPU, a step on the GPU against the CPU, bf16 autocast,
torch.compile, inference on the device and the training command with --device cuda. Skipped where
no GPU is present (CI); run them on a GPU machine with `python -m pytest -q tests/test_gpu.py`."""

import copy
import json
import subprocess
import sys

import pytest
import torch

from speaker_app.checkpoint import load_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.inference import infer
from speaker_app.model import ModelConfig
from speaker_app.registry import build_model
from training.augment import AugmentConfig, Augmenter
from training.config import TrainConfig
from training.data import FeatureBank, crop_batches, read_labelled, read_speakers
from training.loop import autocast, make_optimizer, make_schedule, train_step
from tests.conftest import ROOT
from tests.test_distributed import synthetic_course

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"), pytest.mark.gpu]
SMALL = ModelConfig(d_model=64, n_heads=4, n_layers=2, ff_dim=128, emb_dim=32, frontend_channels=16, dropout=0.0)
NO_AUGMENT = AugmentConfig(bandlimit_prob=0, noise_prob=0, freq_masks=0, time_masks=0)
CUDA = torch.device("cuda")


def batch(seed=0, n=8, frames=150):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, frames, 40, generator=generator) * 2 - 6
    lengths = torch.randint(frames // 2, frames + 1, (n,), generator=generator)
    lengths[0] = frames
    return features, lengths, torch.arange(n) % 5


def steps(model, device, n, precision="fp32", compile=False):
    """n optimisation steps from a copy of `model` on `device` -> losses and the trained copy."""
    config = TrainConfig(model=SMALL, batch_size=8, warmup_steps=1, augment=NO_AUGMENT, precision=precision)
    model = copy.deepcopy(model).to(device).train()
    network = torch.compile(model) if compile else model
    optimizer, augment = make_optimizer(model, config), Augmenter(NO_AUGMENT, FeatureConfig())
    scheduler = make_schedule(optimizer, config)
    losses = []
    for i in range(n):
        loss, _ = train_step(model, network, batch(i), augment, torch.Generator().manual_seed(i), optimizer,
                             scheduler, config, device)
        losses.append(float(loss))
    return losses, model.cpu()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SMALL, 5)


def test_float32_steps_on_the_gpu_match_the_cpu(model):
    cpu_losses, on_cpu = steps(model, torch.device("cpu"), 3)
    gpu_losses, on_gpu = steps(model, CUDA, 3)
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-3)
    features, lengths, _ = batch(9)
    torch.testing.assert_close(on_gpu.eval()(features, lengths), on_cpu.eval()(features, lengths), rtol=1e-3, atol=1e-3)


def test_bf16_steps_agree_with_float32(model):
    fp32, _ = steps(model, CUDA, 5)
    bf16, _ = steps(model, CUDA, 5, precision="bf16")
    assert bf16 == pytest.approx(fp32, rel=0.03)


def test_compiled_steps_match_eager(model):
    eager, _ = steps(model, CUDA, 4)
    compiled, _ = steps(model, CUDA, 4, compile=True)
    assert compiled == pytest.approx(eager, rel=1e-3)


def test_feature_bank_crops_on_the_gpu_equal_the_cpu(tmp_path):
    root = synthetic_course(tmp_path / "data")
    utterances = read_labelled(root, read_speakers(root))
    bank = FeatureBank(root, utterances, 40, torch.float16, progress=False)
    on_cpu = next(crop_batches(utterances, root, 40, 6, 64, seed=3, bank=bank))
    on_gpu = next(crop_batches(utterances, root, 40, 6, 64, seed=3, bank=copy.deepcopy(bank).to(CUDA)))
    assert on_gpu[0].device.type == "cuda"
    for want, got in zip(on_cpu, on_gpu):
        assert torch.equal(got.cpu(), want)


def test_inference_on_the_gpu_matches_the_cpu(model):
    utterances = [torch.randn(n, 40) - 5 for n in (37, 400, 1500)]
    on_cpu = infer(model, utterances)
    on_gpu = infer(copy.deepcopy(model).to(CUDA), utterances, device=CUDA)
    torch.testing.assert_close(on_gpu.embeddings, on_cpu.embeddings, rtol=1e-3, atol=1e-3)
    with autocast(CUDA):  # the bf16 path validation uses
        bf16 = infer(copy.deepcopy(model).to(CUDA), utterances, device=CUDA)
    assert (bf16.embeddings * on_cpu.embeddings).sum(-1).min() > 0.99


@pytest.mark.parametrize("extra", [[], ["--set", "compile=true"]], ids=["eager", "compiled"])
def test_the_training_command_on_cuda_trains_and_resumes(tmp_path, extra):
    data, out = synthetic_course(tmp_path / "data"), tmp_path / "run"
    flags = ["--data", str(data), "--out", str(out), "--device", "cuda", "--batch-size", "8", "--no-progress",
             "--set", "valid_every=10", "--set", "valid_fraction=0.25", "--set", "segment_frames=64",
             "--set", "model.d_model=32", "--set", "model.n_heads=2", "--set", "model.n_layers=1",
             "--set", "model.ff_dim=64", "--set", "model.emb_dim=16", "--set", "warmup_steps=5", *extra]
    for argv in (["--steps", "20"], ["--steps", "30", "--resume", "--extend"]):
        done = subprocess.run([sys.executable, "-m", "training.train", *flags, *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    last = load_checkpoint(out / "last.pt")
    assert last.step == 30 and all(t.device.type == "cpu" for t in last.state_dict.values())
    assert json.loads((out / "config.json").read_text())["steps"] == 30
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]] == ["10", "20", "30"]
