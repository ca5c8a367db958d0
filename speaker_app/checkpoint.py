"""Checkpoint files: save one, and load whichever kind of model file a path names.

A checkpoint (`Checkpoint`, defined in `speaker_app.checkpoint_format` and importable from here) is a
plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)` (through `files.load_tensor_file`): a file carrying a pickled
program is refused instead of run. Writes are atomic (`files.atomic_write`) and can keep the previous
version beside the new one. `load_checkpoint` asks the file's suffix: a `.onnx` file
(`training.export`) loads as an `OnnxCheckpoint`, run by onnxruntime (`speaker_app.onnx_model`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint_format import Checkpoint, CheckpointError
from .files import TensorFileError, atomic_write, load_tensor_file, previous_path
from .onnx_model import load_onnx

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(checkpoint: Checkpoint, path: str | Path, keep_previous: bool = False) -> None:
    atomic_write(path, lambda handle: torch.save(checkpoint.to_dict(), handle), keep_previous)


def load_checkpoint(path: str | Path, fallback: bool = False) -> Checkpoint:
    """Load safely (weights_only). With `fallback`, a damaged file gives way to `<path>.prev`.
    A `.onnx` file (training.export) loads as an OnnxCheckpoint, run by onnxruntime; a checkpoint with
    its export beside it (`<name>.onnx`) carries that graph too, for serving its embeddings."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return load_onnx(path)  # imports onnxruntime, an optional dependency, only now
    try:
        checkpoint = _load(path)
    except CheckpointError as error:
        backup = previous_path(path)
        if not (fallback and backup.exists()):
            raise
        print(f"warning: {error}; using the previous checkpoint {backup}")
        checkpoint = _load(backup)
    graph = path.with_suffix(".onnx")
    if graph.is_file():  # its export: the app serves embeddings with it (onnx_model.served checks it fits)
        checkpoint.embedding_graph = graph.read_bytes()
    return checkpoint


def _load(path: Path) -> Checkpoint:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = load_tensor_file(path)
    except TensorFileError as error:
        raise CheckpointError(f"cannot load checkpoint {path}: {error}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a speaker checkpoint")
    return Checkpoint.from_dict(data)
