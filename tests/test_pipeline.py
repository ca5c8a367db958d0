"""End to end on real speech: prepare -> train (and resume) -> evaluate -> predict, as a user runs them."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from speaker_app.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT
from training.config import TrainConfig

SPEAKERS = ["vcc2016/SF1", "vcc2016/SM1", "vcc2016/TF1", "vcc2016/TM1", "fsdd/george"]
SMALL = ["model.d_model=64", "model.n_heads=4", "model.n_layers=2", "model.ff_dim=128", "model.emb_dim=64",
         "model.frontend_channels=16", "valid_every=100", "segment_frames=150", "warmup_steps=50"]


def run(*args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def prepared(speech_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    include = [arg for speaker in SPEAKERS for arg in ("--include", speaker)]
    run("training.prepare", str(speech_dir), str(data), "--test-fraction", "0.2", "--seed", "1", "--quiet", *include)
    torch.save({"sample_rate": 16000}, data / "wav2mel.pt")  # not an utterance: must be ignored
    return data


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    flags = [arg for setting in SMALL for arg in ("--set", setting)]
    common = ["training.train", "--data", str(prepared), "--out", str(out), "--batch-size", "32", "--no-progress"]
    run(*common, "--steps", "300", *flags)
    # resuming a finished run with more steps continues from last.pt
    run(*common, "--steps", "400", "--resume", "--extend")
    return out


def test_training_writes_a_resumable_run(trained):
    assert {"config.json", "metrics.csv", "best.pt", "last.pt"} <= {p.name for p in trained.iterdir()}
    with open(trained / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [100, 200, 300, 400]
    config = json.loads((trained / "config.json").read_text())
    assert config["steps"] == 400 and config["model"]["d_model"] == 64
    last = torch.load(trained / "last.pt", weights_only=True)
    assert last["step"] == 400 and "optimizer" in last["training_state"]
    assert "optimizer" not in torch.load(trained / "best.pt", weights_only=True)["training_state"]


def test_fine_tuning_starts_from_the_checkpoint(prepared, trained, tmp_path):
    out = tmp_path / "fine-tuned"
    printed = run("training.train", "--data", str(prepared), "--out", str(out), "--init", str(trained / "best.pt"),
                  "--steps", "2", "--set", "valid_every=2", "--set", "warmup_steps=1", "--no-progress")
    assert "it knew 5 of the 5 speakers" in printed
    tuned = torch.load(out / "last.pt", weights_only=True)
    assert tuned["info"]["init"]["speakers_known"] == 5 and tuned["model_config"]["d_model"] == 64  # the checkpoint's model


def test_speaker_augmentation_trains_pseudo_speakers_that_fine_tuning_drops(prepared, tmp_path):
    flags = [arg for setting in SMALL for arg in ("--set", setting)]
    # with half of each batch from one source (vcc2016 or fsdd), so that option is run end to end too
    run("training.train", "--data", str(prepared), "--out", str(tmp_path / "warped"), "--steps", "2", *flags,
        "--set", "valid_every=2", "--set", "valid_fraction=0.2", "--set", "augment.warp_prob=0.5",
        "--set", "same_source=0.5", "--no-progress")
    warped = torch.load(tmp_path / "warped" / "last.pt", weights_only=True)
    assert len(warped["speakers"]) == 15 and warped["speakers"][5].endswith("~warp0.9")
    assert warped["state_dict"]["head.weight"].shape[0] == 15 and warped["metrics"]["valid_top1"] is not None
    printed = run("training.train", "--data", str(prepared), "--out", str(tmp_path / "tuned"), "--init",
                  str(tmp_path / "warped" / "last.pt"), "--steps", "2", "--set", "warmup_steps=1", "--no-progress")
    assert "it knew 5 of the 5 speakers" in printed
    assert torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["state_dict"]["head.weight"].shape[0] == 5


def test_evaluate_is_far_above_chance(prepared, trained):
    out = run("training.evaluate", "--checkpoint", str(trained / "best.pt"), "--data", str(prepared), "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["split"] == "test" and result["n"] == 5 * 24
    assert result["top1"] > 0.8, result  # chance is 0.2
    assert result["top5"] == 1.0
    assert set(result["per_source"]) == {"vcc2016", "fsdd"}


def test_enrollment_on_an_audio_folder(speech_dir, trained):
    out = run("training.evaluate", "--checkpoint", str(trained / "best.pt"), "--audio-dir", str(speech_dir),
              "--include", "vcc2016/S*", "--enroll", "5", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["split"] == "audio" and result["enroll_speakers"] == 5
    assert result["n"] == 2 * 120 and result["n_unknown_speaker"] == 3 * 120
    assert result["enroll_top1"] > 0.4 and result["eer"] < 0.4, result  # chance: 0.2 and 0.5
    assert 0 <= result["min_dcf"] <= 1 and 0 <= result["pair_min_dcf"] <= 1 and "pair_eer" in result
    assert "as_norm" not in result  # scored by cosine in the app too


def test_enrollment_is_also_scored_as_the_app_scores(speech_dir, trained, tmp_path):
    checkpoint = load_checkpoint(trained / "best.pt")
    cohort = torch.nn.functional.normalize(torch.randn(40, checkpoint.model_config.emb_dim,
                                                       generator=torch.Generator().manual_seed(0)), dim=-1)
    checkpoint.cohort, checkpoint.info["calibration"] = cohort, {"score": {"kind": "as-norm", "top_k": 10}}
    save_checkpoint(checkpoint, tmp_path / "as-norm.pt")
    out = run("training.evaluate", "--checkpoint", str(tmp_path / "as-norm.pt"), "--audio-dir", str(speech_dir),
              "--include", "vcc2016/S*", "--enroll", "5", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    scored = result["as_norm"]
    assert "top 10 of a 40-speaker cohort" in scored["score"] and "scored as the app does" in out
    assert scored["enroll_speakers"] == 5 and scored["enroll_test_clips"] == result["enroll_test_clips"]
    assert scored["enroll_top1"] > 0.4 and scored["eer"] < 0.4 and scored["eer"] != result["eer"], result


def test_predict_writes_the_course_csv(prepared, trained, tmp_path):
    csv_path = tmp_path / "pred.csv"
    run("training.predict", "--checkpoint", str(trained / "best.pt"), "--data", str(prepared), "--out", str(csv_path))
    raw = csv_path.read_bytes()
    assert raw.startswith(b"Id,Category\r\n") and raw.endswith(b"\r\n")
    rows = raw.decode().split("\r\n")[1:-1]
    test_order = [u["feature_path"] for u in json.loads((prepared / "testdata.json").read_text())["utterances"]]
    assert [row.split(",")[0] for row in rows] == test_order
    with open(prepared / "test_labels.csv") as handle:
        truth = {row["Id"]: row["Category"] for row in csv.DictReader(handle)}
    predicted = dict(row.split(",") for row in rows)
    assert set(predicted.values()) <= set(SPEAKERS)
    assert sum(predicted[k] == truth[k] for k in truth) / len(truth) > 0.8


def test_clear_errors_for_misuse(prepared, trained, tmp_path):
    result = subprocess.run([sys.executable, "-m", "training.train", "--data", str(prepared), "--out", str(trained),
                             "--steps", "1"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "--resume" in result.stderr
    resume = [sys.executable, "-m", "training.train", "--data", str(prepared), "--out", str(trained), "--resume"]
    result = subprocess.run(resume + ["--set", "lr=0.01", "--batch-size", "16"], cwd=ROOT, capture_output=True, text=True)
    expected = f"lr: run has {TrainConfig().lr}, flags say 0.01"
    assert result.returncode != 0 and expected in result.stderr and "batch_size" in result.stderr
    result = subprocess.run(resume + ["--steps", "500"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "add --extend" in result.stderr  # a longer run is said, not implied
    result = subprocess.run([sys.executable, "-m", "training.evaluate", "--checkpoint", str(tmp_path / "none.pt"),
                             "--data", str(prepared)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "no checkpoint" in result.stderr
