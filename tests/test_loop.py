"""Which checkpoint the loop keeps as best.pt."""

import csv

import torch

from speaker_app.checkpoint import load_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.model import ModelConfig
from speaker_app.registry import build_model
from training import loop
from training.config import TrainConfig
from training.data import FeatureBank

SMALL = ModelConfig(d_model=32, n_heads=2, n_layers=1, ff_dim=64, emb_dim=16, frontend_channels=8)


def test_best_checkpoint_is_the_latest_of_equal_validation_accuracy(tmp_path, monkeypatch):
    config = TrainConfig(model=SMALL, steps=10)
    model = build_model(SMALL, 3)
    optimizer = loop.make_optimizer(model, config)
    scheduler = loop.make_schedule(optimizer, config)
    run = loop.Run(tmp_path, config, FeatureConfig(), ["a", "b", "c"], info={})
    window = {"loss": 1.0, "acc": 0.5, "steps_per_s": 1.0, "elapsed_s": 1.0}
    for step, top1 in [(1, 0.5), (2, 0.8), (3, 0.7), (4, 0.8), (5, 0.6)]:
        monkeypatch.setattr(loop, "evaluate", lambda *args, top1=top1: {"valid_loss": 1.0, "valid_top1": top1,
                                                                         "valid_top5": 1.0})
        run.step = step
        with torch.no_grad():
            model.head.weight.add_(1.0)  # weights that differ at every step
        loop.validate_and_save(run, model, optimizer, scheduler, None, "cpu", window)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best.step == 4 and run.best == 0.8
    torch.testing.assert_close(best.state_dict["head.weight"], model.head.weight - 1.0)
    assert load_checkpoint(tmp_path / "last.pt").step == 5


def test_without_a_validation_split_no_accuracy_is_logged_and_best_is_the_latest(tmp_path):
    config = TrainConfig(model=SMALL, steps=10, valid_fraction=0)
    model = build_model(SMALL, 3)
    optimizer = loop.make_optimizer(model, config)
    scheduler = loop.make_schedule(optimizer, config)
    run = loop.Run(tmp_path, config, FeatureConfig(), ["a", "b", "c"], info={})
    window = {"loss": 1.0, "acc": 0.5, "steps_per_s": 1.0, "elapsed_s": 1.0}
    empty = FeatureBank(tmp_path, [], FeatureConfig().n_mels, progress=False)
    for step in (5, 10):
        run.step = step
        metrics = loop.validate_and_save(run, model, optimizer, scheduler, empty, "cpu", window)
        assert metrics["valid_top1"] is None
    assert load_checkpoint(tmp_path / "best.pt").step == 10
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["step"], row["valid_top1"], row["train_loss"]) for row in rows] == [("5", "", "1"), ("10", "", "1")]
