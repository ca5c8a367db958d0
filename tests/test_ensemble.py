"""Ensembles: trained models of one config answering as one (speaker_app.model.Ensemble, training.ensemble)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from speaker_app.checkpoint import load_checkpoint, save_checkpoint
from speaker_app.inference import infer, infer_explained
from speaker_app.recognizer import Recognizer
from training import ensemble, export, train
from training.ensemble import assemble

from helpers import TINY, tiny


def members(count: int = 2, **changes):
    """Tiny checkpoints of different weights, each with a cohort and decisions of its own."""
    checkpoints = [tiny(seed=seed, **changes) for seed in range(count)]
    for seed, checkpoint in enumerate(checkpoints):
        generator = torch.Generator().manual_seed(seed)
        checkpoint.cohort = F.normalize(torch.randn(6, TINY.emb_dim, generator=generator), dim=-1)
        checkpoint.info = {"calibration": {"threshold": 0.5}, "training_data": {"command": f"run {seed}"}}
    return checkpoints


def utterances():
    generator = torch.Generator().manual_seed(5)
    return [torch.randn(n, 40, generator=generator) * 3 - 5 for n in (90, 61)]


def test_a_score_is_the_mean_of_the_members_scores():
    parts = members(2)
    joined = assemble(parts, ["a.pt", "b.pt"])
    ours = infer(joined.build_model(), utterances())
    theirs = [infer(p.build_model(), utterances()) for p in parts]
    assert ours.embeddings.shape == (2, 2 * TINY.emb_dim)
    assert torch.allclose(ours.embeddings.norm(dim=-1), torch.ones(2))
    pair = float(ours.embeddings[0] @ ours.embeddings[1])
    assert pair == pytest.approx(sum(float(t.embeddings[0] @ t.embeddings[1]) for t in theirs) / 2, abs=1e-5)
    assert torch.allclose(ours.logits, sum(t.logits for t in theirs) / 2, atol=1e-4)  # s * the mean cosine


@pytest.mark.parametrize("window_frames", [0, 40], ids=["whole", "windows"])  # one pass, or windows and a second
def test_the_explanation_is_the_first_members_and_the_answer_the_ensembles(window_frames):
    parts = members(2, config=replace(TINY, window_frames=window_frames))
    model = assemble(parts, ["a.pt", "b.pt"]).build_model()
    answer, insides = infer_explained(model, utterances())
    assert torch.allclose(answer.logits, infer(model, utterances()).logits, atol=1e-5)
    _, first = infer_explained(parts[0].build_model(), utterances())
    for ours, theirs in zip(insides, first):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours.attention, theirs.attention))
        assert torch.allclose(ours.pooling, theirs.pooling, atol=1e-6)


def test_the_file_loads_safely_and_serves_the_recognizer(tmp_path, capsys):
    parts = members(3)
    for i, part in enumerate(parts):
        save_checkpoint(part, tmp_path / f"{i}.pt")
    assert ensemble.main([str(tmp_path / f"{i}.pt") for i in range(3)] + ["--out", str(tmp_path / "e.pt")]) == 0
    assert "3 models, 48-dim embedding" in capsys.readouterr().out
    loaded = load_checkpoint(tmp_path / "e.pt")  # weights_only inside
    assert loaded.model_config.members == 3 and "calibration" not in loaded.info and loaded.cohort is None
    assert [m["command"] for m in loaded.info["ensemble"]] == ["run 0", "run 1", "run 2"]
    recognizer = Recognizer(loaded)
    assert recognizer.embedding_dim == 48 and recognizer.prototypes.shape == (3, 48)
    embedding = recognizer.embed(utterances()[0])
    assert embedding.shape == (48,)
    assert recognizer.scores(embedding)[1].shape == (3,)  # cosine, until a cohort and decisions are made


@pytest.mark.parametrize("change, message", [
    (lambda ps: ps[1].speakers.reverse(), "classes"),
    (lambda ps: setattr(ps[1], "model_config", replace(ps[1].model_config, d_model=16)), "model config"),
    (lambda ps: ps.pop(), "at least two"),
])
def test_members_that_do_not_fit_are_refused(change, message):
    parts = members(2)
    change(parts)
    with pytest.raises(ValueError, match=message):
        assemble(parts, [f"{i}.pt" for i in range(len(parts))])


def test_an_ensemble_is_neither_nested_nor_trained(tmp_path):
    joined = assemble(members(2), ["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="ensemble already"):
        assemble([joined, joined], ["e.pt", "e.pt"])
    save_checkpoint(joined, tmp_path / "e.pt")
    with pytest.raises(SystemExit, match="is an ensemble"):
        train.main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--init", str(tmp_path / "e.pt")])
    with pytest.raises(SystemExit, match="not trained"):
        train.main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "model.members=2"])


def test_an_ensemble_exports_to_onnx_and_serves_alike(tmp_path):
    pytest.importorskip("onnxruntime")
    joined = assemble(members(2), ["a.pt", "b.pt"])
    export.export(joined, tmp_path / "e.onnx")
    served, ours = load_checkpoint(tmp_path / "e.onnx").build_model(), joined.build_model()
    theirs, mine = infer(served, utterances()), infer(ours, utterances())
    assert torch.allclose(theirs.logits, mine.logits, atol=1e-3)
    assert torch.allclose(theirs.embeddings, mine.embeddings, atol=1e-4)
