"""Distillation: the student learns the teacher's embedding, and only the student trains."""

import pytest
import torch
import torch.nn.functional as F

from speaker_app.model import ModelConfig
from speaker_app.registry import build_model
from speaker_app.features import FeatureConfig
from training import loop
from training.augment import AugmentConfig, Augmenter
from training.config import TrainConfig
from training.distill import Distilled

TEACHER = ModelConfig(d_model=32, n_heads=2, n_layers=1, ff_dim=64, emb_dim=16, frontend_channels=8)
STUDENT = ModelConfig(d_model=16, n_heads=2, n_layers=1, ff_dim=32, emb_dim=16, frontend_channels=4)


def batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 50, 40, generator=generator), torch.full((8,), 50), torch.arange(8) % 3


def test_distillation_brings_the_students_embedding_to_the_teachers():
    torch.manual_seed(0)
    teacher, student = build_model(TEACHER, 5).eval(), build_model(STUDENT, 3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    config = TrainConfig(model=STUDENT, steps=60, lr=1e-2, warmup_steps=1, teacher="unused", distill_weight=10.0)
    network = Distilled(student, teacher, config.distill_weight)
    optimizer = loop.make_optimizer(student, config)
    scheduler = loop.make_schedule(optimizer, config)
    features, lengths, labels = batch(1)

    def distance():
        student.eval()
        with torch.no_grad():
            value = 1 - F.cosine_similarity(student.embed(features, lengths), teacher.embed(features, lengths)).mean()
        student.train()
        return float(value)

    no_augment = Augmenter(AugmentConfig(bandlimit_prob=0, noise_prob=0, freq_masks=0, time_masks=0), FeatureConfig())
    start = distance()
    network.train()
    assert not teacher.training
    for step in range(60):
        loop.train_step(student, network, (features, lengths, labels), no_augment, torch.Generator(), optimizer,
                        scheduler, config, torch.device("cpu"))
    assert distance() < start / 3
    for key, value in teacher.state_dict().items():  # the teacher never moves, not even its BatchNorm statistics
        torch.testing.assert_close(value, before[key])


def test_a_teacher_of_another_embedding_size_is_refused():
    with pytest.raises(ValueError, match="16 dimensions, the teacher's 8"):
        Distilled(build_model(STUDENT, 3), build_model(ModelConfig(**{**TEACHER.__dict__, "emb_dim": 8}), 3), 1.0)


@pytest.mark.parametrize("fields", [{"teacher": "t.pt"}, {"distill_weight": 1.0}, {"teacher": "t.pt", "distill_weight": -1}])
def test_distillation_needs_a_teacher_and_a_positive_weight(fields):
    with pytest.raises(ValueError, match="distillation needs both"):
        TrainConfig(**fields)
