"""The model shipped in checkpoints/: it loads safely, knows the 31 speakers of ../shared/speech
and identifies the committed example clips, which it never trained on."""

import pytest
import torch

from speaker_app.checkpoint import load_checkpoint
from speaker_app.recognizer import Recognizer
from tests.conftest import EXAMPLES, ROOT, example_rows


@pytest.fixture(scope="module")
def shipped(default_checkpoint):
    return load_checkpoint(default_checkpoint)


def test_loads_with_weights_only_and_stays_small(default_checkpoint):
    raw = torch.load(default_checkpoint, map_location="cpu", weights_only=True)  # raises on any pickled object
    assert isinstance(raw, dict) and default_checkpoint.stat().st_size < 20 * 2**20
    assert default_checkpoint.with_suffix(".onnx").stat().st_size < 20 * 2**20  # its export, which the app embeds with


def test_has_the_31_speakers_of_the_speech_folder(shipped):
    assert len(shipped.speakers) == len(set(shipped.speakers)) == 31
    assert {name.split("/")[0] for name in shipped.speakers} == {"asterisk", "emodb", "fsdd", "vcc2016"}


def test_speakers_match_the_folders(shipped, speech_dir):
    folders = {f"{source.name}/{speaker.name}" for source in speech_dir.iterdir() if source.is_dir()
               for speaker in source.iterdir() if speaker.is_dir()}
    assert set(shipped.speakers) <= folders


def test_model_card_figures_are_the_checkpoints(shipped):
    card = (ROOT / "checkpoints" / "README.md").read_text()
    evaluation, new = shipped.info["evaluation"], shipped.info["new_speakers"]
    assert evaluation["top1"] >= 0.97 and all(s["top1"] >= 0.9 for s in evaluation["per_source"].values())
    # 103 unseen speakers of four sources, one of them never trained on (the 31-speaker model: 53.3%, 13.9%)
    assert new["enroll_top1"] >= 0.7 and new["eer"] <= 0.1
    assert calibration_goals_met(shipped.info["calibration"]["identification"])
    assert f"{100 * evaluation['top1']:.2f}%" in card and f"{100 * new['enroll_top1']:.1f}%" in card
    calibration = shipped.info["calibration"]
    thresholds = ([calibration["identification"]["threshold"], calibration["verification"]["threshold"]]
                  if "identification" in calibration else [calibration["threshold"]])  # the older record: one
    assert all(f"{threshold:.3f}" in card for threshold in thresholds)


def calibration_goals_met(identification: dict) -> bool:
    """Both goals held where they were set: strangers named (with speakers enrolled; before galleries, unseen
    clips named) and the known speakers' clips named correctly."""
    measured, goals = identification["measured"], identification["goals"]
    named = ("strangers_named", "max_strangers_named") if "strangers_named" in measured else ("unseen_named", "max_unseen_named")
    return measured[named[0]] <= goals[named[1]] and measured["known_correct"] >= goals["min_known_correct"]


@pytest.mark.parametrize("row", example_rows(), ids=lambda row: row["file"])
def test_identifies_each_example_it_never_trained_on(shipped, row):
    assert row["clip"] in shipped.info["training_data"]["held_out_clips"]
    result = Recognizer(shipped).identify(EXAMPLES / row["file"])
    assert result.matches[0][0] == row["speaker"], result.matches[:3]
