"""Distillation: a student trained to carry a frozen teacher's embedding as well as its own labels.

    python -m training.train ... --set teacher=checkpoints/default.pt --set distill_weight=5

The student's loss is its AM-softmax cross-entropy plus `distill_weight` times the
mean cosine distance between its embedding of each crop and the teacher's
embedding of the same (augmented) crop. The embedding is what identifies unseen
voices, so it is what the student is asked to copy; the teacher's classes need
not be the student's (the shipped model keeps only the 31 speakers' rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speaker_app.checkpoint import CheckpointError, load_checkpoint


class Distilled(nn.Module):
    """(features, lengths, labels) -> (the student's logits, the distillation loss). Only the
    student's parameters train; the teacher stays in eval mode whatever `train()` is called on."""

    def __init__(self, student: nn.Module, teacher: nn.Module, weight: float):
        super().__init__()
        if student.config.embedding_size != teacher.config.embedding_size:
            raise ValueError(f"the student's embedding has {student.config.embedding_size} dimensions, the "
                             f"teacher's {teacher.config.embedding_size}: distillation compares the two")
        self.student, self.teacher, self.weight = student, teacher.eval().requires_grad_(False), weight

    def train(self, mode: bool = True) -> Distilled:
        self.student.train(mode)
        return self

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
        raw = self.student.embed(features, lengths)
        with torch.no_grad():
            target = self.teacher.embed(features, lengths)
        distance = 1 - F.cosine_similarity(raw.float(), target.float(), dim=-1)
        return self.student.head(raw, labels), self.weight * distance.mean()


def load_teacher(path: str, device) -> nn.Module:
    """The frozen network of a checkpoint (an ensemble's members included), on `device`."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as error:
        raise SystemExit(f"error: teacher: {error}")
    return checkpoint.build_model().to(device).eval().requires_grad_(False)
