"""The facade on a small untrained model: input handling, enrollment, verification, explanation."""

import numpy as np
import pytest
import soundfile as sf
import torch

from speaker_app.checkpoint import Checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.gallery import sanitise_name
from speaker_app.model import ModelConfig
from speaker_app.recognizer import MAP_CELLS, InputError, Recognizer, shrink_map
from speaker_app.registry import build_model
from tests.conftest import speechlike_features, voiced

SPEAKERS = ["a/one", "a/two", "b/three"]


@pytest.fixture
def checkpoint():
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16)
    model = build_model(config, len(SPEAKERS))
    return Checkpoint(config, FeatureConfig(), SPEAKERS, model.state_dict(), info={"calibration": {"threshold": 0.6}})


@pytest.fixture
def recognizer(checkpoint, tmp_path):
    return Recognizer(checkpoint, tmp_path / "gallery.json")


def test_sources_agree(recognizer, tmp_path):
    wave = voiced(1.0)
    sf.write(tmp_path / "x.wav", wave, 16000)
    from_file = recognizer.embed(tmp_path / "x.wav")
    from_array = recognizer.embed((16000, (wave * 32767).astype(np.int16)))
    features, _ = recognizer.features(tmp_path / "x.wav")
    torch.save(features, tmp_path / "x.pt")
    np.save(tmp_path / "x.npy", features.numpy())
    assert torch.allclose(from_file, from_array, atol=1e-3)
    assert torch.allclose(recognizer.embed(tmp_path / "x.pt"), from_file, atol=1e-6)
    assert torch.allclose(recognizer.embed(tmp_path / "x.npy"), from_file, atol=1e-6)
    assert torch.allclose(from_file.norm(), torch.tensor(1.0))


def test_identify_ranks_known_speakers(recognizer):
    result = recognizer.identify(torch.randn(200, 40), top_k=2)
    assert len(result.matches) == 2 and result.threshold == 0.6
    assert result.matches[0].probability >= result.matches[1].probability
    assert {m.name for m in result.matches} <= set(SPEAKERS)


def test_enroll_verify_and_persist(recognizer, checkpoint, tmp_path):
    clips = [speechlike_features(150, seed=i) for i in range(3)]
    name = recognizer.enroll("  ../Ann/\\..  ", clips)
    assert name == "Ann .." and recognizer.gallery.names() == [name]
    result = recognizer.identify(clips[0], top_k=len(SPEAKERS) + 1)
    assert name in [m.name for m in result.matches]
    again = Recognizer(checkpoint, tmp_path / "gallery.json")  # survives a restart, with each clip's embedding
    assert again.gallery.names() == [name]
    stored = again.gallery.enrolled()
    assert stored.clips.shape == (3, 16) and stored.owners.tolist() == [0, 0, 0]
    assert torch.allclose(stored.clips[0], recognizer.embed(clips[0]), atol=1e-5)
    assert recognizer.verify(clips[0], clips[0]).same
    assert recognizer.forget(name) and recognizer.gallery.names() == []
    with pytest.raises(InputError, match="one to five"):
        recognizer.enroll("x", clips * 2)
    with pytest.raises(InputError, match="already one of the model"):
        recognizer.enroll("a/one", clips[:1])


def test_gallery_of_another_model_is_refused(recognizer, tmp_path):
    recognizer.enroll("ann", [speechlike_features(100)])
    torch.manual_seed(1)
    config = ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16)
    other = Checkpoint(config, FeatureConfig(), SPEAKERS, build_model(config, 3).state_dict())
    with pytest.raises(ValueError, match="another model"):
        Recognizer(other, tmp_path / "gallery.json")


def test_explain_gives_maps_for_each_layer(recognizer):
    explanation = recognizer.explain(torch.randn(200, 40))
    assert len(explanation.attention) == 2
    step = recognizer.model.frame_step  # input frames per encoder frame
    assert 200 // step <= MAP_CELLS
    assert explanation.attention[0].shape == (2, 200 // step, 200 // step)
    assert explanation.pooling.shape == (200 // step,)
    assert explanation.frame_seconds == pytest.approx(0.01 * step)
    assert explanation.seconds == pytest.approx(2.0)


def test_long_explanations_keep_maps_of_bounded_size_whose_rows_still_sum_to_one(recognizer):
    explanation = recognizer.explain(torch.randn(1500, 40))
    step = recognizer.model.frame_step
    assert len(explanation.pooling) == 1500 // step and explanation.seconds == pytest.approx(15.0)
    for maps in explanation.attention:
        assert maps.shape == (2, MAP_CELLS, MAP_CELLS) and maps.dtype == torch.float16
        assert torch.allclose(maps.float().sum(-1), torch.ones(2, MAP_CELLS), atol=0.02)


def test_shrink_map_averages_queries_and_adds_up_keys():
    maps = torch.softmax(torch.randn(3, 10, 10), -1)
    assert shrink_map(maps, 10) is maps
    shrunk = shrink_map(maps, 5)
    assert shrunk.shape == (3, 5, 5)
    # cell (i, j): mean over the two queries of span i of their attention summed over the two keys of span j
    expected = maps.reshape(3, 5, 2, 5, 2).sum(-1).mean(2)
    assert torch.allclose(shrunk, expected, atol=1e-6)


@pytest.mark.parametrize("tensor, message", [
    (torch.randn(100, 80), "40 mel bins"),
    (torch.randn(40, 100), "transposed"),
    (torch.randn(100), "2-D"),
    (torch.randn(2, 100, 40), "2-D"),
    (torch.ones(100, 40, dtype=torch.int64), "floating-point"),
    (torch.full((100, 40), float("nan")), "NaN"),
    (torch.full((100, 40), float("inf")), "NaN"),
    (torch.randn(1, 40), "too little speech"),
])
def test_bad_feature_tensors(recognizer, tmp_path, tensor, message):
    torch.save(tensor, tmp_path / "bad.pt")
    with pytest.raises(InputError, match=message):
        recognizer.identify(tmp_path / "bad.pt")


def test_bad_files(recognizer, tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.flac").write_bytes(b"\x00junk" * 100)
    sf.write(tmp_path / "short.wav", voiced(0.1), 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    for name, message in [("empty.wav", "empty"), ("junk.flac", "cannot decode"), ("short.wav", "too short"),
                          ("silent.wav", "no speech"), ("missing.wav", "no such file")]:
        with pytest.raises(InputError, match=message):
            recognizer.identify(tmp_path / name)


def test_names_are_sanitised():
    assert sanitise_name("a/b\\c\x00d") == "a b c d"
    with pytest.raises(ValueError):
        sanitise_name("x" * 500)
    with pytest.raises(ValueError):
        sanitise_name(" / .. ")
    # No leading dots even when they follow a separator, so a second pass changes nothing.
    assert sanitise_name("../../etc/passwd") == "etc passwd" == sanitise_name("etc passwd")
    with pytest.raises(ValueError, match="visible character"):
        sanitise_name("../..")
