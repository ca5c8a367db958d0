"""An exported ONNX model (`python -m training.export`) served where a checkpoint is served.

    checkpoint = load_onnx("model.onnx")  # what load_checkpoint returns for a .onnx path
    recognizer = Recognizer(checkpoint)

onnxruntime runs the graph; the file's metadata gives the speakers, the
feature and model configurations and the checkpoint's info (calibration,
training data). `OnnxSpeakerModel` offers what `inference.infer` and the
Recognizer use of a `SpeakerModel`: `embed` (raw embeddings, which infer pools
over the chunks of long utterances) and `head`. The head is the model's own
head class (from `build_model`) holding the exported unit prototypes; loading
checks that it reproduces the graph's logits. Attention maps and pooling
weights are not in the graph: `forward_intermediates` raises NotImplementedError.

onnxruntime and onnx are optional dependencies: `pip install onnxruntime onnx`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint_format import Checkpoint, CheckpointError, check_cohort, weights_digest
from .features import FeatureConfig
from .model import MarginHead, ModelConfig
from .registry import build_model

INSTALL = "pip install onnxruntime onnx"
HEAD_TOLERANCE = 1e-3  # max |logit difference| between the rebuilt head and the graph's logits


class OnnxSpeakerModel:
    """The parts of SpeakerModel's interface that inference needs, on an onnxruntime session."""

    def __init__(self, session, config: ModelConfig, head: nn.Module):
        self.session = session
        self.config = config
        self.head = head

    def eval(self) -> OnnxSpeakerModel:
        return self

    def _run(self, names: list[str], features: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        if features.dim() != 3 or features.shape[-1] != self.config.n_mels:
            raise ValueError(f"features must be (B, T, {self.config.n_mels}), got {tuple(features.shape)}")
        if lengths.shape != features.shape[:1] or int(lengths.min()) < 1 or int(lengths.max()) > features.shape[1]:
            raise ValueError(f"lengths must be (B,) within [1, T={features.shape[1]}], got {lengths.tolist()}")
        feeds = {"features": features.detach().cpu().float().numpy(),
                 "lengths": lengths.detach().cpu().to(torch.int64).numpy()}
        return self.session.run(names, feeds)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels), (B,) -> (B, E) embeddings, before normalisation (the head's input)."""
        return torch.from_numpy(self._run(["raw_embedding"], features, lengths)[0])

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels), (B,) -> (B, C) logits, no margin: the graph's own."""
        return torch.from_numpy(self._run(["logits"], features, lengths)[0])

    def forward_intermediates(self, features, lengths):
        raise NotImplementedError("attention maps and pooling weights are not shown: "
                                  "an ONNX model computes only logits and embeddings")


@dataclass
class OnnxCheckpoint(Checkpoint):
    """A Checkpoint read from an ONNX file's metadata; `state_dict` holds the graph's initializers
    (so a gallery fingerprint tells models apart), `build_model` gives an OnnxSpeakerModel."""

    graph: bytes = b""
    threads: int | None = None  # onnxruntime's intra-op threads; None: as many as torch uses

    def build_model(self) -> OnnxSpeakerModel:
        session = open_session(self.graph, self.threads)
        outputs = {o.name for o in session.get_outputs()}
        if not {"logits", "embedding", "raw_embedding"} <= outputs:
            raise CheckpointError(f"not a model of `python -m training.export`: outputs {sorted(outputs)}")
        if "prototypes" not in outputs:
            raise CheckpointError("this model's head has no class prototypes (e.g. the course baseline's linear "
                                  "classifier), so the app cannot score pooled embeddings with it; use the graph's "
                                  "logits and embedding outputs directly")
        return OnnxSpeakerModel(session, self.model_config, self._head(session))

    def to_dict(self) -> dict:
        raise CheckpointError("an ONNX model cannot be saved as a checkpoint: its initializers are not the "
                              "model's state dict; keep the checkpoint it was exported from")

    def _head(self, session) -> nn.Module:
        """The model's own head class holding the exported prototypes, checked against the graph's logits."""
        lengths = torch.tensor([37])
        features = torch.randn(1, 37, self.model_config.n_mels, generator=torch.Generator().manual_seed(0)) * 3 - 5
        logits, raw, prototypes = session.run(["logits", "raw_embedding", "prototypes"],
                                              {"features": features.numpy(), "lengths": lengths.numpy()})
        config = self.model_config
        # An ensemble's head, without a margin, is a margin head over the joined prototypes (model.EnsembleHead).
        head = build_model(config, len(self.speakers)).head if config.members == 1 else MarginHead(
            config.embedding_size, len(self.speakers), config.scale, config.margin, angular=config.head == "aam")
        try:
            head.load_state_dict({"weight": torch.from_numpy(prototypes)})
        except RuntimeError as error:
            raise CheckpointError(f"this model's head ({type(head).__name__}) is not held by its prototypes: "
                                  f"{str(error).splitlines()[0]}") from None
        with torch.no_grad():
            difference = float((head.eval()(torch.from_numpy(raw)) - torch.from_numpy(logits)).abs().max())
        if difference > HEAD_TOLERANCE:
            raise CheckpointError(f"this model's head ({type(head).__name__}) does not reproduce the graph's logits "
                                  f"from its prototypes (max difference {difference:.2e})")
        return head.requires_grad_(False)


class OnnxEmbedded(OnnxSpeakerModel):
    """A torch SpeakerModel whose embeddings come from its own export in onnxruntime (on one CPU thread, a 1-s
    clip in half torch's time, a 20-s one in four fifths: bench.inference_speed); the head, the explanations
    (attention maps) and everything else are the torch model's."""

    def __init__(self, model: nn.Module, session):
        super().__init__(session, model.config, model.head)
        self.torch_model = model

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(features, lengths))

    def forward_intermediates(self, features, lengths):
        return self.torch_model.forward_intermediates(features, lengths)

    def __getattr__(self, name: str):  # members, frame_step, ...: the torch model's
        if name == "torch_model":  # not set yet (copies, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.torch_model, name)


def served(checkpoint: Checkpoint):
    """The model the app runs: the checkpoint's network, its embeddings computed by the export found beside
    the checkpoint (`Checkpoint.embedding_graph`) when that graph holds these very weights and onnxruntime
    loads it; otherwise, with a warning when there was a graph, the torch network alone."""
    model = checkpoint.build_model()
    if checkpoint.embedding_graph is None:
        return model
    try:
        session = open_session(checkpoint.embedding_graph)
    except CheckpointError as error:
        print(f"warning: serving in torch: the export beside the checkpoint: {error}")
        return model
    exported = json.loads(session.get_modelmeta().custom_metadata_map.get("weights", '""'))
    if exported != weights_digest(checkpoint.state_dict) or "raw_embedding" not in {
            o.name for o in session.get_outputs()}:
        print("warning: serving in torch: the .onnx file beside the checkpoint was exported from other weights "
              "(export it again: python -m training.export)")
        return model
    return OnnxEmbedded(model, session)


def open_session(graph: bytes, threads: int | None = None):
    """An onnxruntime session on the CPU with `threads` intra-op threads (None: as many as torch uses)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # No memory arena: it keeps the largest batch's buffers for good (an hour's diarization peaked at 2.2 GB).
    options.enable_cpu_mem_arena = False
    try:
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/InvalidArgument types
        raise CheckpointError(f"onnxruntime cannot load this model: {str(error).splitlines()[0]}") from None


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError(f"serving an ONNX model needs onnxruntime, which is not installed: {INSTALL}") from None
    return onnxruntime


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxCheckpoint:
    """Read an exported model: the graph, its metadata and initializers."""
    path = Path(path)
    import_onnxruntime()
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise CheckpointError(f"serving an ONNX model needs the onnx package, not installed: {INSTALL}") from None
    if not path.is_file():
        raise CheckpointError(f"no model at {path}")
    graph = path.read_bytes()
    try:
        proto = onnx.load_from_string(graph)
    except Exception as error:  # protobuf's DecodeError, or onnx's own errors
        reason = f"it is truncated or damaged ({type(error).__name__})"
        raise CheckpointError(f"cannot load ONNX model {path}: {reason}") from None
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    missing = {"speakers", "feature_config", "model_config"} - set(meta)
    if missing:
        raise CheckpointError(f"{path} is not a speaker model of `python -m training.export`: "
                              f"its metadata lacks {sorted(missing)}")
    try:
        checkpoint = OnnxCheckpoint(
            # A file older than a config field holds a model that behaved as its LEGACY value says.
            model_config=ModelConfig.from_dict(json.loads(meta["model_config"])),
            feature_config=FeatureConfig.from_dict(json.loads(meta["feature_config"])),
            speakers=list(json.loads(meta["speakers"])),
            state_dict={i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer},
            step=int(json.loads(meta.get("step", "0"))), metrics=dict(json.loads(meta.get("metrics", "{}"))),
            info=dict(json.loads(meta.get("info", "{}"))), graph=graph, threads=threads,
            cohort=decode_tensor(json.loads(meta["cohort"])) if "cohort" in meta else None)
    except (TypeError, ValueError, KeyError, binascii.Error) as error:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} has invalid metadata: {error}") from None
    if checkpoint.feature_config.n_mels != checkpoint.model_config.n_mels:
        features, model = checkpoint.feature_config.n_mels, checkpoint.model_config.n_mels
        raise CheckpointError(f"{path} does not fit together: its feature config makes {features} mel bins, "
                              f"its model expects {model}")
    check_cohort(checkpoint.cohort, checkpoint.model_config.embedding_size)
    return checkpoint


def decode_tensor(data: dict) -> torch.Tensor:
    """training.export's JSON form of a float tensor (shape and base64 little-endian float32) -> the tensor."""
    values = np.frombuffer(base64.b64decode(data["float32_base64"], validate=True), dtype="<f4")
    return torch.from_numpy(values.astype(np.float32).reshape(data["shape"]))
