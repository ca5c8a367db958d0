"""Untrusted and damaged files: pickled programs are refused without running, checkpoints that do
not fit say why, a truncated checkpoint gives way to the previous one, and writes are atomic."""

import os

import gradio as gr
import numpy as np
import pytest
import torch

import app
from speaker_app import files as files_module
from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.files import atomic_write, previous_path
from speaker_app.gallery import Gallery
from speaker_app.model import ModelConfig
from speaker_app.recognizer import InputError, Recognizer
from speaker_app.registry import build_model
from training.data import DataError, load_features

from tests.helpers import TINY, tiny


class Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file. Any code could run instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def malicious(kind: str, path, marker):
    if kind == "features.pt":
        torch.save([Payload(marker), torch.randn(100, 40)], path)
    elif kind == "checkpoint.pt":
        data = tiny().to_dict()
        data["info"] = {"note": Payload(marker)}
        torch.save(data, path)
    elif kind == "features.npy":
        np.save(path, np.array([Payload(marker), 1.0], dtype=object), allow_pickle=True)
    return path


@pytest.mark.parametrize("kind", ["features.pt", "checkpoint.pt", "features.npy"])
def test_the_payload_runs_when_loaded_unsafely(tmp_path, kind):
    """The control: without weights_only / allow_pickle=False the file does run code."""
    path = malicious(kind, tmp_path / kind, tmp_path / "marker")
    if kind.endswith(".npy"):
        np.load(path, allow_pickle=True)
    else:
        torch.load(path, weights_only=False)
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("kind", ["features.pt", "features.npy"])
def test_a_pickled_program_as_a_feature_file_is_refused_unrun(tmp_path, kind):
    path = malicious(kind, tmp_path / kind, tmp_path / "marker")
    recognizer = Recognizer(tiny())
    with pytest.raises(InputError, match=f"cannot read {kind}") as caught:
        recognizer.identify(path)
    if kind.endswith(".pt"):
        assert "refused: loading it could run code" in str(caught.value)
    handlers = app.Handlers(recognizer)
    with pytest.raises(gr.Error, match=f"cannot read {kind}"):
        handlers.identify(None, str(path), 3)
    with pytest.raises(DataError, match=f"cannot load {kind}"):
        load_features(path, 40)  # what train, evaluate and predict read
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("content", [b"garbage" * 10, b"PK\x03\x04" + bytes(100)])
def test_a_damaged_feature_file_is_not_called_a_program(tmp_path, content):
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(InputError, match="cannot read x.pt: ") as caught:
        Recognizer(tiny()).identify(tmp_path / "x.pt")
    assert "run code" not in str(caught.value) and "weights_only" not in str(caught.value)


def test_a_pickled_program_as_a_checkpoint_is_refused_unrun(tmp_path, capsys):
    path = malicious("checkpoint.pt", tmp_path / "model.pt", tmp_path / "marker")
    with pytest.raises(CheckpointError, match="cannot load checkpoint .*model.pt: .*refused: loading it could run code"):
        load_checkpoint(path)
    assert app.main(["--checkpoint", str(path), "--gallery", str(tmp_path / "gallery")]) == 1
    assert "cannot load checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("make, message", [
    (lambda: Checkpoint(TINY, FeatureConfig(), ["a", "b", "c"],
                        build_model(ModelConfig(d_model=64, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16), 3)
                        .state_dict()),
     r"weights do not fit the stored model config.*size mismatch for frontend.project.weight.*\[64, 640\].*\[32, 640\]"),
    (lambda: Checkpoint(TINY, FeatureConfig(), ["a", "b"], build_model(TINY, 3).state_dict()),
     r"weights do not fit.*head.weight.*\[3, 16\].*\[2, 16\]"),
    (lambda: tiny(features=FeatureConfig(n_mels=80)),
     "its feature config makes 80 mel bins, its model expects 40"),
    (lambda: tiny(config=ModelConfig(n_mels=80, d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16)),
     "its feature config makes 40 mel bins, its model expects 80"),
])
def test_a_checkpoint_that_does_not_fit_names_the_mismatch(tmp_path, make, message):
    save_checkpoint(make(), tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=message):
        Recognizer.from_checkpoint(tmp_path / "odd.pt")


def test_a_truncated_checkpoint_is_detected_and_the_previous_one_used(tmp_path, capsys):
    path = tmp_path / "last.pt"
    first, second = tiny(seed=0), tiny(seed=1)
    first.step, second.step = 5, 10
    save_checkpoint(first, path, keep_previous=True)
    save_checkpoint(second, path, keep_previous=True)
    assert load_checkpoint(previous_path(path)).step == 5 and load_checkpoint(path).step == 10
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a disk that lost the tail
    with pytest.raises(CheckpointError, match="last.pt: it is truncated or damaged"):
        load_checkpoint(path)
    assert load_checkpoint(path, fallback=True).step == 5
    assert "using the previous checkpoint" in capsys.readouterr().out
    for damage in (b"", b"garbage" * 10):  # an empty file gave an IndexError
        path.write_bytes(damage)
        with pytest.raises(CheckpointError, match="truncated or damaged"):
            load_checkpoint(path)
    previous_path(path).unlink()
    with pytest.raises(CheckpointError, match="truncated or damaged"):  # no fallback left: still a clear error
        load_checkpoint(path, fallback=True)


class Boom(RuntimeError):
    pass


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def half_then_fail(handle):
        handle.write(b"new, but only ha")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(path, half_then_fail, keep_previous=True)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(files_module.os, "fsync", lambda fd: calls.append(("fsync", os.fstat(fd).st_size)))
    replace = os.replace
    monkeypatch.setattr(files_module.os, "replace", lambda a, b: calls.append(("rename", b)) or replace(a, b))
    atomic_write(tmp_path / "x", lambda handle: handle.write(b"12345"))
    assert calls[:2] == [("fsync", 5), ("rename", tmp_path / "x")]  # the data reach the disk, then the name
    assert calls[2][0] == "fsync"  # and the folder, so that the rename itself survives a crash


def test_a_crash_while_the_gallery_is_written_keeps_the_old_gallery(tmp_path, monkeypatch):
    gallery = Gallery(tmp_path / "gallery.json", "model-1")
    gallery.add("ann", torch.ones(4) / 2, 1)
    before = (tmp_path / "gallery.json").read_bytes()

    def failing_replace(source, target):
        raise Boom("disk full")

    monkeypatch.setattr(files_module.os, "replace", failing_replace)
    with pytest.raises(Boom):
        gallery.add("bob", torch.ones(4) / 2, 1)
    with pytest.raises(Boom):
        gallery.remove("ann")
    assert (tmp_path / "gallery.json").read_bytes() == before
    assert gallery.names() == ["ann"]  # memory agrees with the file
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.json"]
    monkeypatch.undo()
    assert Gallery(tmp_path / "gallery.json", "model-1").names() == ["ann"]
