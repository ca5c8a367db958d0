"""Export a checkpoint to ONNX: the whole network after the features, and what it needs to identify.

    python -m training.export --checkpoint CKPT --out FILE.onnx [--opset N]

The graph runs the model's own `embed` and `head` (input normalisation, padding
masks, pooling, the margin-free head), so a padded batch answers like one
utterance at a time:

- inputs: `features` (B, T, n_mels) float32 log-mel frames, zero or anything on
  padding; `lengths` (B,) int64, the real frames of each row, 1..T. B and T are dynamic.
- outputs: `logits` (B, C) without margin; `embedding` (B, E) unit norm;
  `raw_embedding` (B, E), the head's input before normalisation (speaker_app
  pools it over the chunks of long utterances, as the torch path does); and,
  when the head has class vectors in the embedding space (AM-softmax),
  `prototypes` (C, E), unit norm, the known speakers for open-set scoring.
- metadata (JSON strings, `metadata_props`): `speakers`, `feature_config`,
  `model_config`, `info` (calibration, training data, evaluation), `metrics`,
  `step`, `format_version`, `exported_from`, `weights` (the checkpoint's
  `weights_digest`: the app serves a checkpoint's embeddings with the export
  beside it, `<name>.onnx`, only when these match), and `cohort` when the checkpoint
  carries one (score normalisation): `{"shape": [K, E], "float32_base64": ...}`,
  little-endian float32.

The exporter is `torch.onnx.export(dynamo=True)` (torch.export): it traces
symbolic shapes and refuses code that reads tensor values, where the
deprecated TorchScript exporter would silently bake them in as constants.
Every export is checked against torch on a padded batch before it is written.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from speaker_app.checkpoint_format import weights_digest
from speaker_app.files import atomic_write

FORMAT_VERSION = 1
INPUTS = ["features", "lengths"]
PARITY_TOLERANCE = 1e-3  # max |logit difference| against torch accepted at export


class ExportGraph(nn.Module):
    """(features (B, T, n_mels), lengths (B,)) -> logits, unit embedding, raw embedding[, prototypes],
    through the model's own embed and head (no margin: no labels)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        weight = getattr(model.head, "weight", None)
        self.has_prototypes = isinstance(weight, torch.Tensor) and weight.dim() == 2 \
            and weight.shape[1] == model.config.embedding_size

    @property
    def output_names(self) -> list[str]:
        return ["logits", "embedding", "raw_embedding"] + ["prototypes"] * self.has_prototypes

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        raw = self.model.embed(features, lengths)  # (B, E)
        outputs = (self.model.head(raw), F.normalize(raw, dim=-1), raw)
        if self.has_prototypes:  # as the Recognizer reads them: unit class vectors (C, E)
            outputs += (F.normalize(self.model.head.weight, dim=-1),)
        return outputs


def example_batch(n_mels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two (B > 1 and uneven lengths, so neither is taken for a constant)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([203, 157])
    features = torch.randn(2, 203, n_mels, generator=generator) * 3 - 5
    return features, lengths


def to_onnx(model: nn.Module, opset: int | None = None):
    """The exported ModelProto of an eval-mode SpeakerModel (no metadata yet)."""
    import onnx  # noqa: F401  (torch.onnx needs onnx and onnxscript; fail here with their names)
    import onnxscript  # noqa: F401

    graph = ExportGraph(model.eval())
    batch, frames = torch.export.Dim("batch"), torch.export.Dim("frames")
    with warnings.catch_warnings(), quiet("torch.onnx", "onnx_ir", "onnxscript"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, example_batch(model.config.n_mels), dynamo=True, verbose=False,
                                    input_names=INPUTS, output_names=graph.output_names, opset_version=opset,
                                    dynamic_shapes={"features": {0: batch, 1: frames}, "lengths": {0: batch}})
    return program.model_proto


@contextlib.contextmanager
def quiet(*names: str):
    """The exporter's libraries log progress and harmless notes (skipped torchvision ops) at WARNING."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def encode_tensor(tensor: torch.Tensor) -> dict:
    """A float tensor as JSON: its shape and its little-endian float32 bytes in base64."""
    data = tensor.detach().cpu().float().contiguous().numpy().astype("<f4").tobytes()
    return {"shape": list(tensor.shape), "float32_base64": base64.b64encode(data).decode("ascii")}


def add_metadata(proto, checkpoint: Checkpoint, source: str) -> None:
    """Everything the app shows and needs, as JSON strings in the model's metadata."""
    values = {"format_version": FORMAT_VERSION, "exported_from": source, "speakers": checkpoint.speakers,
              "feature_config": checkpoint.feature_config.to_dict(), "model_config": checkpoint.model_config.to_dict(),
              "info": checkpoint.info, "metrics": checkpoint.metrics, "step": checkpoint.step,
              "weights": weights_digest(checkpoint.state_dict)}
    if checkpoint.cohort is not None:
        values["cohort"] = encode_tensor(checkpoint.cohort)
    del proto.metadata_props[:]
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    kind, speakers = checkpoint.model_config.kind, len(checkpoint.speakers)
    proto.doc_string = (f"Speaker identification ({kind}), {speakers} speakers. Inputs: features (B, T, n_mels) "
                        "log-mel, lengths (B,) int64. Outputs: logits (B, C), embedding (B, E) unit norm. "
                        "Metadata: speakers, feature_config, model_config, info.")


def parity(proto, model: nn.Module) -> float:
    """Max |logit difference| between onnxruntime and torch on the example batch; raises if the top-1 differs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    features, lengths = example_batch(model.config.n_mels)
    logits = session.run(["logits"], {"features": features.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        expected = model(features, lengths)
    if not (torch.from_numpy(logits).argmax(-1) == expected.argmax(-1)).all():
        raise RuntimeError("the exported graph's top-1 differs from torch's")
    return float((torch.from_numpy(logits) - expected).abs().max())


def export(checkpoint: Checkpoint, out: str | Path, opset: int | None = None, source: str = "") -> float:
    """Write `out` (atomically); returns the max |logit difference| against torch on a padded batch."""
    import onnx

    model = checkpoint.build_model()
    proto = to_onnx(model, opset)
    add_metadata(proto, checkpoint, source)
    onnx.checker.check_model(proto)
    difference = parity(proto, model)
    if difference > PARITY_TOLERANCE:
        raise RuntimeError(f"the exported graph differs from torch: max |logit difference| {difference:.2e}")
    atomic_write(out, lambda handle: handle.write(proto.SerializeToString()))
    return difference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint of this project (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the ONNX file to write")
    parser.add_argument("--opset", type=int, help="ONNX opset, 18 or newer (default: the exporter's)")
    args = parser.parse_args(argv)
    if args.opset is not None and args.opset < 18:
        parser.error(f"--opset must be 18 or newer (torch.onnx's dynamo exporter), got {args.opset}")
    if args.checkpoint.suffix.lower() == ".onnx":
        parser.error(f"{args.checkpoint} is already an ONNX model; export from the checkpoint (.pt) it came from")
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        difference = export(checkpoint, args.out, args.opset, source=args.checkpoint.name)
    except ImportError as error:
        print(f"error: exporting needs onnx, onnxscript and onnxruntime (pip install -r requirements-dev.txt): "
              f"{error}", file=sys.stderr)
        return 1
    size = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MB, {len(checkpoint.speakers)} speakers); "
          f"max |logit difference| against torch on a padded batch: {difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
