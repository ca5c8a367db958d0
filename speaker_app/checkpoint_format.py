"""What a checkpoint holds: the `Checkpoint` record, the plain dict it is stored as, and its checks.

A checkpoint is weights plus everything needed to use them: the model and feature configs, the
speakers, the training state, the info (training data, calibration) and the AS-norm cohort. Its dict
holds only tensors, numbers, strings, lists and dicts, so it loads with `torch.load(...,
weights_only=True)`. Files are written and read by `speaker_app.checkpoint`; an exported ONNX model is
an `OnnxCheckpoint` (`speaker_app.onnx_model`), a Checkpoint read from the graph's metadata.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .features import FeatureConfig
from .model import ModelConfig, SpeakerModel
from .registry import build_model

FORMAT_VERSION = 2  # 2: model configs name every architecture choice of their time (a field they lack: its LEGACY value)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged, unsafe or does not fit."""


@dataclass
class Checkpoint:
    model_config: ModelConfig
    feature_config: FeatureConfig
    speakers: list[str]
    state_dict: dict[str, torch.Tensor]
    step: int = 0
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # training data, config, calibration, ...
    training_state: dict = field(default_factory=dict)  # optimizer, scheduler, RNG: last.pt only
    # (K, E) unit embeddings of training speakers that are not among `speakers` (for the default model,
    # their mean embeddings): the cohort that adaptive score normalisation compares each side of a trial with.
    cohort: torch.Tensor | None = None
    # The ONNX export of these weights found beside the checkpoint file (`<name>.onnx`, training.export), which
    # the app serves the embeddings with (`onnx_model.served`); never saved in the checkpoint itself.
    embedding_graph: bytes | None = field(default=None, repr=False)

    def build_model(self) -> SpeakerModel:
        """The torch network (for training and explanations; the app serves `onnx_model.served(checkpoint)`)."""
        model = build_model(self.model_config, len(self.speakers))
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as error:
            # torch lists every tensor; the first problem and a count say enough.
            problems = [line.strip() for line in str(error).splitlines()[1:] if line.strip()] or [str(error)]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckpointError(f"weights do not fit the stored model config: {problems[0]}{more}") from None
        return model.eval()

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "model_config": self.model_config.to_dict(),
            "feature_config": self.feature_config.to_dict(),
            "speakers": list(self.speakers),
            "state_dict": self.state_dict,
            "step": self.step,
            "metrics": self.metrics,
            "info": self.info,
            "training_state": self.training_state,
            **({"cohort": self.cohort} if self.cohort is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Checkpoint:
        missing = {"model_config", "feature_config", "speakers", "state_dict"} - set(data)
        if missing:
            raise CheckpointError(f"not a speaker checkpoint: missing {sorted(missing)}")
        version = data.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format {version} is newer than this code ({FORMAT_VERSION})")
        try:
            checkpoint = cls(
                model_config=ModelConfig.from_dict(data["model_config"]),
                feature_config=FeatureConfig.from_dict(data["feature_config"]),
                speakers=list(data["speakers"]), state_dict=data["state_dict"],
                step=int(data.get("step", 0)), metrics=dict(data.get("metrics", {})),
                info=dict(data.get("info", {})), training_state=dict(data.get("training_state", {})),
                cohort=data.get("cohort"),
            )
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"checkpoint config is invalid: {error}") from None
        features, model = checkpoint.feature_config.n_mels, checkpoint.model_config.n_mels
        if features != model:
            raise CheckpointError(f"checkpoint does not fit together: its feature config makes {features} mel bins, "
                                  f"its model expects {model}")
        check_cohort(checkpoint.cohort, checkpoint.model_config.embedding_size)
        return checkpoint


def check_cohort(cohort, emb_dim: int) -> None:
    """A cohort is None or a finite floating-point (K, emb_dim) tensor with K >= 2."""
    if cohort is None:
        return
    if not isinstance(cohort, torch.Tensor) or cohort.dim() != 2 or len(cohort) < 2 or cohort.shape[1] != emb_dim:
        shape = tuple(cohort.shape) if isinstance(cohort, torch.Tensor) else type(cohort).__name__
        raise CheckpointError(f"checkpoint's cohort must be a (K >= 2, {emb_dim}) tensor, got {shape}")
    if not cohort.dtype.is_floating_point or not torch.isfinite(cohort).all():
        raise CheckpointError("checkpoint's cohort must hold finite floating-point values")


def hash_weights(digest, state_dict: dict[str, torch.Tensor]):
    """Feed the weights, names and values, into a hashlib digest; returns it."""
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of the weights, names and values (what an export's `weights` metadata holds)."""
    return hash_weights(hashlib.sha256(), state_dict).hexdigest()
