"""Mixed precision: statistics stay in float32, and a bf16 training step agrees with a float32 one."""

import copy

import torch

from speaker_app.features import FeatureConfig
from speaker_app.model import AttentiveStatsPooling, ModelConfig
from speaker_app.registry import build_model
from training.augment import AugmentConfig, Augmenter
from training.config import TrainConfig
from training.loop import make_optimizer, make_schedule, train_step

SMALL = ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16, frontend_channels=8, dropout=0.0)


def test_pooling_statistics_survive_bf16_inputs():
    """A large mean and a small spread: E[x^2] - mean^2 in bf16 loses the spread entirely."""
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(8, 4)
    x = 50 + 0.05 * torch.randn(2, 300, 8)
    mask = torch.ones(2, 300, dtype=torch.bool)
    want, _ = pooling(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = pooling(x, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[:, 8:], want[:, 8:], rtol=0.05, atol=1e-3)  # the standard deviations
    torch.testing.assert_close(got[:, :8], want[:, :8], rtol=1e-3, atol=1e-3)  # and the means


def one_step(model, context):
    config = TrainConfig(model=SMALL, batch_size=8, warmup_steps=1, augment=AugmentConfig(
        bandlimit_prob=0, noise_prob=0, freq_masks=0, time_masks=0))
    model = copy.deepcopy(model).train()
    optimizer = make_optimizer(model, config)
    scheduler = make_schedule(optimizer, config)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(8, 120, 40, generator=generator) * 2 - 6
    lengths = torch.tensor([120, 100, 90, 80, 120, 60, 50, 110])
    labels = torch.arange(8) % 5
    augment = Augmenter(config.augment, FeatureConfig())
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loss, _ = train_step(model, model, (features, lengths, labels), augment, generator, optimizer, scheduler,
                         config, torch.device("cpu"), context)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss), after - before, grads


def test_a_bf16_step_agrees_with_a_float32_step():
    torch.manual_seed(0)
    model = build_model(SMALL, 5)
    loss32, update32, grad32 = one_step(model, None)
    loss16, update16, grad16 = one_step(model, torch.autocast("cpu", dtype=torch.bfloat16))
    assert abs(loss16 - loss32) < 0.02 * loss32
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.98
    assert torch.nn.functional.cosine_similarity(update16, update32, dim=0) > 0.9  # Adam's first step is sign-like
