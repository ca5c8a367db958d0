"""training.calibrate: the identification operating point, the fits, and the command on real clips."""

import math

import pytest
import torch

from speaker_app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.model import ModelConfig
from speaker_app.recognizer import Recognizer
from speaker_app.registry import build_model
from training import calibrate
from training.calibrate import OpenSet, choose_identification_threshold, fit_slope, fit_temperature, open_set_rates


def open_set(known_best, known_correct, unseen_best) -> OpenSet:
    known_best = torch.tensor(known_best, dtype=torch.float)
    empty = torch.zeros(len(known_best))
    return OpenSet(known_best, torch.tensor(known_correct), empty, torch.tensor(unseen_best, dtype=torch.float),
                   empty[:, None], empty.long())


def test_a_threshold_that_meets_both_goals_sits_midway_between_them():
    # 20 known clips score 0.80..0.99 (one ranked wrong); 20 unseen clips score 0.30..0.68 plus two strangers high.
    known = [0.8 + 0.01 * i for i in range(20)]
    correct = [i != 5 for i in range(20)]
    unseen = [0.3 + 0.02 * i for i in range(20)] + [0.85, 0.9]
    trials = open_set(known, correct, unseen)
    threshold, rule = choose_identification_threshold(trials, max_unseen_named=0.10, min_known_correct=0.90)
    rates = open_set_rates(trials, threshold)
    assert rates["unseen_named"] <= 0.10 and rates["known_correct"] >= 0.90 and "midway" in rule
    # The range: above the third-highest unseen score (0.68: 2 of 22 may be named) and up to 0.81 (18 of 20 correct).
    assert threshold == pytest.approx((0.68 + 0.81) / 2, abs=1e-6)


def test_when_the_goals_conflict_strangers_come_first():
    trials = open_set([0.5, 0.6, 0.7, 0.8], [True] * 4, [0.55, 0.65, 0.75, 0.85] + [0.1] * 6)
    threshold, rule = choose_identification_threshold(trials, max_unseen_named=0.10, min_known_correct=0.95)
    rates = open_set_rates(trials, threshold)
    assert rates["unseen_named"] <= 0.10 and "no threshold meets both goals" in rule
    assert rates["known_correct"] == 0.25  # as many as that allows: only 0.8 is above 0.75
    assert 0.75 < threshold < 0.8


def test_clips_without_speech_are_never_named():
    trials = open_set([0.9, -math.inf], [True, True], [0.2, -math.inf])
    threshold, _ = choose_identification_threshold(trials, 0.5, 0.5)
    rates = open_set_rates(trials, threshold)
    assert rates["known_correct"] == 0.5 and rates["known_not_named"] == 0.5 and rates["unseen_named"] <= 0.5


def test_the_slope_and_temperature_fits_recover_what_made_the_data():
    generator = torch.Generator().manual_seed(0)
    margins = torch.randn(20000, generator=generator) * 2
    known = torch.rand(20000, generator=generator) < torch.sigmoid(3.0 * margins)
    assert fit_slope(margins, known) == pytest.approx(3.0, rel=0.1)
    scores = torch.randn(5000, 8, generator=generator)
    labels = torch.multinomial((scores / 0.25).softmax(-1), 1, generator=generator)[:, 0]
    assert fit_temperature(scores, labels) == pytest.approx(0.25, rel=0.1)
    with pytest.raises(ValueError, match="both"):
        fit_slope(margins[:5], torch.ones(5, dtype=torch.bool))


def test_the_command_calibrates_and_the_app_reads_it(speech_dir, tmp_path):
    """A small untrained model whose 'known' speakers are two vcc2016 voices and whose unseen ones are
    emodb and fsdd speakers: the figures mean nothing, the machinery and the record are what is tested."""
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, ff_dim=32, emb_dim=8)
    known = ["vcc2016/SF1", "vcc2016/SM1"]
    held_out = [f"{s}/{p.name}" for s in known for p in sorted((speech_dir / s).glob("*.flac"))[:6]]
    checkpoint = Checkpoint(config, FeatureConfig(), known, build_model(config, 2).state_dict(),
                            info={"training_data": {"held_out_clips": held_out}})
    save_checkpoint(checkpoint, tmp_path / "in.pt")
    cohort_list = tmp_path / "dev.txt"
    cohort_list.write_text("# split speaker\ncalibration emodb/03\ncalibration fsdd/george\ntest emodb/08\n")
    calibrate.main(["--checkpoint", str(tmp_path / "in.pt"), "--audio-dir", str(speech_dir),
                    "--speakers", str(cohort_list), "--split", "calibration", "--max-clips", "6",
                    "--speech", str(speech_dir), "--cohort-dir", str(speech_dir), "--cohort-include", "asterisk/*",
                    "--cohort-clips", "2", "--top-k", "3", "--out", str(tmp_path / "out.pt"), "--no-progress"])
    out = load_checkpoint(tmp_path / "out.pt")
    record = out.info["calibration"]
    assert out.cohort.shape == (5, 8) and out.info["cohort"]["sources"] == ["asterisk"]
    assert record["score"] == {"kind": "as-norm", "top_k": 3, "cohort_size": 5,
                               "describe": "cosine adaptively s-normalised (AS-norm, top 3 of a 5-speaker cohort "
                                           "and the other enrolled speakers' clips)"}
    identification = record["identification"]
    assert identification["trials"]["known_clips"] == 12 and identification["trials"]["unseen_clips"] == 12
    assert identification["unseen"]["sources"] == ["emodb", "fsdd"] and identification["known"]["speakers"] == 2
    assert identification["measured"]["unseen_named"] <= 0.10 or "no threshold" in identification["rule"]
    assert record["verification"]["trials"]["pairs"] == 12 * 11 // 2
    assert record["probability"]["slope"] > 0 and record["probability"]["temperature"] > 0
    assert "dev.txt split calibration" in record["dev"] and "--split calibration" in record["made"]["command"]
    recognizer = Recognizer(out)
    assert recognizer.scorer.kind == "as-norm" and recognizer.threshold == identification["threshold"]
    assert recognizer.verification_threshold == record["verification"]["threshold"]
    assert recognizer.decisions.probability_calibrated and recognizer.decisions.identification.calibrated


def test_known_clips_can_come_from_a_prepared_folder(speech_dir, tmp_path):
    """--known-data: the test split of a folder `training.prepare` made (here of 2 x 8 linked clips)."""
    from training import prepare

    for speaker in ("vcc2016/SF1", "vcc2016/SM1"):
        (tmp_path / "audio" / speaker).mkdir(parents=True)
        for clip in sorted((speech_dir / speaker).glob("*.flac"))[:8]:
            (tmp_path / "audio" / speaker / clip.name).symlink_to(clip)
    prepare.main([str(tmp_path / "audio"), str(tmp_path / "prepared"), "--test-fraction", "0.25", "--workers", "1",
                  "--quiet"])
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, ff_dim=32, emb_dim=8)
    checkpoint = Checkpoint(config, FeatureConfig(), ["vcc2016/SF1", "vcc2016/SM1"],
                            build_model(config, 2).state_dict())
    model = checkpoint.build_model()
    known = calibrate.known_clips(checkpoint, model, tmp_path / "prepared", speech_dir, progress=False)
    assert sorted(set(known.speakers)) == ["vcc2016/SF1", "vcc2016/SM1"] and len(known.speakers) == 4
    assert known.embeddings.shape == (4, 8) and known.speech.all()
    with pytest.raises(SystemExit, match="records no held-out clips"):
        calibrate.known_clips(checkpoint, model, None, speech_dir, progress=False)
