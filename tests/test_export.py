"""ONNX export (`python -m training.export`): parity with torch, padding, metadata, and the app on the ONNX file.

The parity tests run the default model on real speech and random models of
each architecture choice (subsampling 1, 2, 4 and 8, both front ends,
multi-scale aggregation, batch norm, rotary positions, both margin heads,
per-utterance normalisation, the course baseline), so they keep holding
when the architecture changes.
"""

import json
import sys
from dataclasses import replace

import numpy as np
import onnxruntime
import pytest
import torch
from gradio_client import handle_file

import app
from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig, features_from_file
from speaker_app.inference import infer, infer_explained
from speaker_app.model import ModelConfig
from speaker_app.onnx_model import OnnxCheckpoint, OnnxEmbedded
from speaker_app.recognizer import Recognizer
from speaker_app.registry import build_model
from tests.conftest import EXAMPLES
from tests import helpers
from tests.helpers import start_app, stop_app
from training import export

LENGTHS = (37, 400, 1500)
ALLISON = EXAMPLES / "asterisk-allison_en-US_followme-status.flac"
SMALL = dict(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=24, conv_kernel=5)
CONV1D = dict(frontend="conv1d", conv_norm="layer", aggregate="last")  # the architecture before issue 11
CONFIGS = {
    "subsample1-rotary": ModelConfig(**SMALL, **CONV1D, subsample=1, position="rotary"),
    "subsample2-conv2d-mfa-batchnorm-aam": ModelConfig(**SMALL, subsample=2, frontend="conv2d", frontend_channels=8,
                                                       aggregate="mfa", conv_norm="batch", head="aam"),
    "subsample4": ModelConfig(**SMALL, **CONV1D, subsample=4),
    "subsample8-cmn": ModelConfig(**SMALL, **CONV1D, subsample=8, input_norm="cmn"),
    "default-architecture": ModelConfig(**SMALL, frontend_channels=8),
    "baseline": ModelConfig.baseline(),
}
SPEAKERS = ["a/one", "a/two", "b/three", "b/four", "c/five"]


def session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(graph: onnxruntime.InferenceSession, utterances: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """The graph's outputs for (T_i, n_mels) utterances, as one padded batch (padding: -20, as the course pads)."""
    lengths = torch.tensor([len(u) for u in utterances])
    padded = torch.nn.utils.rnn.pad_sequence(utterances, batch_first=True, padding_value=-20.0)
    names = [o.name for o in graph.get_outputs()]
    return dict(zip(names, graph.run(None, {"features": padded.numpy(), "lengths": lengths.numpy()})))


def assert_parity(model, graph, utterances: list[torch.Tensor]):
    """Alone and as one padded batch: logits within 1e-3 of torch's (one at a time), the same top-1,
    unit embeddings that match torch's."""
    with torch.no_grad():
        expected = [model.forward_intermediates(u[None], torch.tensor([len(u)])) for u in utterances]
    logits = torch.cat([e.logits for e in expected])
    embeddings = torch.cat([e.embedding for e in expected])
    alone = [run(graph, [u]) for u in utterances]
    for outputs in [{k: np.concatenate([a[k] for a in alone]) for k in alone[0]}, run(graph, utterances)]:
        got = torch.from_numpy(outputs["logits"])
        assert (got - logits).abs().max() < 1e-3
        assert torch.equal(got.argmax(-1), logits.argmax(-1))
        assert torch.allclose(torch.from_numpy(outputs["embedding"]).norm(dim=-1), torch.ones(len(utterances)))
        assert (torch.from_numpy(outputs["embedding"]) - embeddings).abs().max() < 1e-4


@pytest.fixture(scope="module")
def speech() -> list[torch.Tensor]:
    """Real log-mel features of 37, 400 and 1,500 frames, from the examples (joined and repeated)."""
    clips = [features_from_file(p, FeatureConfig()) for p in sorted(EXAMPLES.glob("*.flac"))]
    joined = torch.cat(clips * (1 + max(LENGTHS) // sum(map(len, clips))))
    return [joined[offset:offset + n] for offset, n in zip((0, 120, 7), LENGTHS)]


@pytest.fixture(scope="module")
def exported(default_checkpoint, tmp_path_factory):
    """The default model, exported by the command line."""
    path = tmp_path_factory.mktemp("onnx") / "default.onnx"
    assert export.main(["--checkpoint", str(default_checkpoint), "--out", str(path)]) == 0
    return path


def test_default_model_matches_torch_alone_and_padded(exported, default_checkpoint, speech):
    model = load_checkpoint(default_checkpoint).build_model()
    assert_parity(model, session(exported), speech)


def random_checkpoint(config: ModelConfig) -> Checkpoint:
    torch.manual_seed(0)
    model = build_model(config, len(SPEAKERS))
    model.set_input_statistics(torch.linspace(-6, -2, config.n_mels), torch.linspace(1, 3, config.n_mels))
    for name, buffer in model.named_buffers():  # batch norm's running statistics, away from the identity
        if name.endswith(("running_mean", "running_var")):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    return Checkpoint(config, FeatureConfig(), SPEAKERS, model.state_dict(), step=7,
                      info={"calibration": {"threshold": 0.42, "method": "a test"}})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_architectures_match_torch_with_dynamic_batch_and_length(name, tmp_path):
    checkpoint = random_checkpoint(CONFIGS[name])
    path = tmp_path / "model.onnx"
    export.export(checkpoint, path)
    graph = session(path)
    assert [[d if isinstance(d, str) else int(d) for d in i.shape] for i in graph.get_inputs()] == \
        [["batch", "frames", 40], ["batch"]]
    generator = torch.Generator().manual_seed(1)
    utterances = [torch.randn(n, 40, generator=generator) * 3 - 5 for n in (*LENGTHS, 1)]
    assert_parity(checkpoint.build_model(), graph, utterances)
    if any(o.name == "prototypes" for o in graph.get_outputs()):  # served: the head rebuilt, chunks pooled
        ours, theirs = (infer(m, utterances, chunk_frames=600)
                        for m in (load_checkpoint(path).build_model(), checkpoint.build_model()))
        assert (ours.logits - theirs.logits).abs().max() < 1e-3


def test_metadata_identifies_without_the_checkpoint(exported, default_checkpoint):
    """Speakers, feature and model config, calibration: all readable with onnxruntime alone."""
    original = load_checkpoint(default_checkpoint)
    meta = {k: json.loads(v) for k, v in session(exported).get_modelmeta().custom_metadata_map.items()}
    assert meta["speakers"] == original.speakers
    assert FeatureConfig.from_dict(meta["feature_config"]) == original.feature_config
    assert ModelConfig.from_dict(meta["model_config"]) == original.model_config
    assert meta["info"]["calibration"] == original.info["calibration"]
    loaded = load_checkpoint(exported)
    assert isinstance(loaded, OnnxCheckpoint)
    as_json = json.loads(json.dumps([original.info, original.metrics]))  # tuples come back as lists
    assert (loaded.speakers, loaded.step, [loaded.info, loaded.metrics]) == (original.speakers, original.step, as_json)
    assert loaded.model_config == original.model_config and loaded.feature_config == original.feature_config


def test_a_cohort_travels_in_the_metadata_and_scores_alike(tmp_path):
    checkpoint = random_checkpoint(CONFIGS["subsample4"])
    checkpoint.cohort = torch.randn(12, SMALL["emb_dim"], generator=torch.Generator().manual_seed(2))
    checkpoint.info["calibration"] = {"score": {"kind": "as-norm", "top_k": 5},
                                      "identification": {"threshold": 1.5}, "verification": {"threshold": 1.0}}
    export.export(checkpoint, tmp_path / "model.onnx")
    loaded = load_checkpoint(tmp_path / "model.onnx")
    assert torch.equal(loaded.cohort, checkpoint.cohort)
    features = torch.randn(300, 40, generator=torch.Generator().manual_seed(3)) * 3 - 5
    ours, theirs = Recognizer(loaded), Recognizer(checkpoint)
    assert ours.scorer.kind == "as-norm"
    embedding = ours.embed(features)
    assert torch.allclose(ours.scores(embedding)[1], theirs.scores(theirs.embed(features))[1], atol=1e-3)


def in_torch(path) -> Checkpoint:
    """The checkpoint at `path` without the export found beside it: served by torch alone."""
    checkpoint = load_checkpoint(path)
    checkpoint.embedding_graph = None
    return checkpoint


def test_a_checkpoint_is_served_by_the_export_beside_it(tmp_path, speech):
    """Same answers as torch, windows and explanations included; attention maps still come from torch."""
    checkpoint = random_checkpoint(replace(CONFIGS["default-architecture"], window_frames=120))
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    assert not isinstance(Recognizer(load_checkpoint(tmp_path / "model.pt")).model, OnnxEmbedded)
    export.export(checkpoint, tmp_path / "model.onnx")
    served, plain = Recognizer(load_checkpoint(tmp_path / "model.pt")), Recognizer(in_torch(tmp_path / "model.pt"))
    assert isinstance(served.model, OnnxEmbedded) and served.fingerprint == plain.fingerprint
    ours, theirs = infer(served.model, speech), infer(plain.model, speech)
    assert (ours.logits - theirs.logits).abs().max() < 1e-3
    assert (ours.embeddings - theirs.embeddings).abs().max() < 1e-4
    (answer, insides), (expected, _) = (infer_explained(r.model, speech) for r in (served, plain))
    assert (answer.embeddings - expected.embeddings).abs().max() < 1e-4
    assert [tuple(i.pooling.shape) for i in insides] == [(19,), (200,), (750,)]


def test_an_export_of_other_weights_is_not_served(tmp_path, capsys):
    save_checkpoint(random_checkpoint(CONFIGS["default-architecture"]), tmp_path / "model.pt")
    other = random_checkpoint(CONFIGS["default-architecture"])
    other.state_dict = {k: v + 0.01 if v.is_floating_point() else v for k, v in other.state_dict.items()}
    export.export(other, tmp_path / "model.onnx")
    assert not isinstance(Recognizer(load_checkpoint(tmp_path / "model.pt")).model, OnnxEmbedded)
    assert "exported from other weights" in capsys.readouterr().out
    (tmp_path / "model.onnx").write_bytes(b"not a graph")
    assert not isinstance(Recognizer(load_checkpoint(tmp_path / "model.pt")).model, OnnxEmbedded)
    assert "serving in torch" in capsys.readouterr().out


def test_the_shipped_export_holds_the_shipped_weights(default_checkpoint):
    """checkpoints/default.onnx is default.pt's export: retrain without exporting again and this fails."""
    assert isinstance(Recognizer(load_checkpoint(default_checkpoint)).model, OnnxEmbedded)


def test_onnx_model_serves_the_recognizer_like_torch(exported, default_checkpoint, speech):
    """Prototypes, scale, open-set verdict, and long utterances pooled over chunks."""
    torch_side, onnx_side = Recognizer(in_torch(default_checkpoint)), Recognizer(load_checkpoint(exported))
    assert (onnx_side.prototypes - torch_side.prototypes).abs().max() < 1e-5
    assert onnx_side.model.head.scale == torch_side.model.head.scale
    assert onnx_side.threshold == torch_side.threshold
    ours, theirs = onnx_side.identify(ALLISON, 3), torch_side.identify(ALLISON, 3)
    assert [m.name for m in ours.matches] == [m.name for m in theirs.matches] and ours.best.name == "asterisk/allison"
    assert ours.best.score == pytest.approx(theirs.best.score, abs=1e-4)
    long = torch.cat(speech * 3)  # 5,811 frames: three chunks of at most 2,000
    ours, theirs = (infer(r.model, [long, speech[0]], chunk_frames=2000) for r in (onnx_side, torch_side))
    assert (ours.logits - theirs.logits).abs().max() < 1e-3
    assert (ours.embeddings - theirs.embeddings).abs().max() < 1e-4
    with pytest.raises(ValueError, match="lengths"):
        onnx_side.model.embed(torch.zeros(2, 10, 40), torch.tensor([10, 11]))


def test_app_handlers_answer_with_the_onnx_file(exported, tmp_path):
    handlers = app.Handlers(app.load_recognizer(exported, tmp_path / "gallery"))
    label, verdict, features_plot, attention_plot, explanation = handlers.identify(str(ALLISON), None, 3)
    assert list(label)[0] == "asterisk/allison"
    assert "### asterisk/allison" in verdict and "attention maps and pooling weights are not shown" in verdict
    assert features_plot is None and attention_plot is None and explanation is None
    message, rows, _ = handlers.enroll("Ann", [str(ALLISON)])
    assert "Enrolled" in message and rows[0][0] == "Ann"
    verdict, score = handlers.verify(str(ALLISON), str(ALLISON))
    assert "Same speaker" in verdict and score >= handlers.recognizer.verification_threshold


def test_app_server_answers_the_example_with_the_onnx_file(exported, tmp_path):
    process, url = start_app(exported, tmp_path)
    try:
        client = helpers.client(url, tmp_path / "downloads")
        label, verdict = client.predict(handle_file(str(ALLISON)), None, 3, api_name="/identify")
    finally:
        stop_app(process)
    assert label["label"] == "asterisk/allison" and "not shown" in verdict


def test_missing_onnxruntime_is_a_clear_message(exported, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(CheckpointError, match="pip install onnxruntime"):
        load_checkpoint(exported)
    assert app.main(["--checkpoint", str(exported)]) == 1
    assert "needs onnxruntime" in capsys.readouterr().err


def test_a_head_without_prototypes_exports_but_is_not_served(tmp_path):
    """The course baseline's linear classifier: the graph works, the recognizer says why it cannot use it."""
    path = tmp_path / "baseline.onnx"
    export.export(random_checkpoint(CONFIGS["baseline"]), path)
    assert [o.name for o in session(path).get_outputs()] == ["logits", "embedding", "raw_embedding"]
    with pytest.raises(CheckpointError, match="no class prototypes"):
        Recognizer(load_checkpoint(path))


def test_bad_files_and_arguments(tmp_path, capsys):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(damaged)
    with pytest.raises(CheckpointError, match="no model"):
        load_checkpoint(tmp_path / "missing.onnx")
    assert export.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", str(damaged), "--out", str(tmp_path / "x.onnx")])
    save_checkpoint(random_checkpoint(CONFIGS["subsample4"]), tmp_path / "m.pt")
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "x.onnx"), "--opset", "17"])
    assert not (tmp_path / "x.onnx").exists()


def test_the_default_model_pipeline_writes_the_export_the_app_serves(tmp_path, monkeypatch, capsys):
    from training import default_model

    checkpoint = random_checkpoint(CONFIGS["default-architecture"])
    save_checkpoint(checkpoint, tmp_path / "model.pt")
    default_model.write_export(checkpoint, tmp_path / "model.onnx")
    assert isinstance(Recognizer(load_checkpoint(tmp_path / "model.pt")).model, OnnxEmbedded)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the exporter missing: no stale export stays behind
    default_model.write_export(checkpoint, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists() and "serves it in torch" in capsys.readouterr().out
