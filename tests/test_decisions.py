"""The open-set decision rule on a fixture made here: known prototypes along axes, chosen thresholds."""

import math

import pytest
import torch
import torch.nn.functional as F

from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from speaker_app.decisions import MAX_PROBABILITY, Decisions
from speaker_app.features import FeatureConfig
from speaker_app.model import ModelConfig
from speaker_app.recognizer import Recognizer
from speaker_app.registry import build_model
from speaker_app.scoring import Scorer
from speaker_app.speech import SpeechCheck

SPEAKERS = ["a/one", "a/two", "b/three"]
CONFIG = ModelConfig(d_model=16, n_heads=2, n_layers=1, ff_dim=32, emb_dim=6)
CALIBRATION = {"score": {"kind": "cosine"},
               "identification": {"threshold": 0.8, "method": "made up for the test"},
               "verification": {"threshold": 0.6, "method": "made up too"},
               "probability": {"slope": 10.0, "temperature": 0.1, "method": "chosen"}}


def axis(i: int, dim: int = 6) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), dim).float()


def checkpoint(calibration=CALIBRATION, cohort=None) -> Checkpoint:
    """Speaker k's prototype is axis k (0, 1, 2); axes 3-5 belong to no known speaker."""
    state = build_model(CONFIG, len(SPEAKERS)).state_dict()
    state["head.weight"] = torch.eye(6)[:3] * 5  # any length: prototypes are normalised
    return Checkpoint(CONFIG, FeatureConfig(), SPEAKERS, state, info={"calibration": calibration}, cohort=cohort)


def decide(recognizer, embedding, speech=None):
    return recognizer.decide(F.normalize(embedding, dim=-1), torch.zeros(3), 1.0, [], 3, speech)


def test_a_close_speaker_is_named_and_a_far_one_is_unknown():
    recognizer = Recognizer(checkpoint())
    close = decide(recognizer, axis(1) + 0.1 * axis(4))  # cosine 0.995 with a/two
    assert close.best.name == "a/two" and close.best.score == pytest.approx(0.995, abs=1e-3)
    assert close.matches[0].name == "a/two" and close.threshold == 0.8 and close.speech
    p_known = 1 / (1 + math.exp(-10 * (close.best.score - 0.8)))
    assert 1 - close.unknown == pytest.approx(p_known, abs=1e-5)
    assert sum(m.probability for m in close.matches) + close.unknown == pytest.approx(1.0, abs=1e-5)
    far = decide(recognizer, axis(1) + 1.2 * axis(4))  # cosine 0.64: below the threshold
    assert far.best is None and far.unknown > 0.5
    assert far.matches[0].name == "a/two"  # still ranked first, just not named
    assert sum(m.probability for m in far.matches) + far.unknown == pytest.approx(1.0, abs=1e-5)


def test_named_exactly_when_p_known_reaches_one_half():
    recognizer = Recognizer(checkpoint())
    for cos in (0.79, 0.8, 0.81):
        embedding = cos * axis(0) + math.sqrt(1 - cos ** 2) * axis(5)
        result = decide(recognizer, embedding)
        assert (result.best is not None) == (cos >= 0.8 - 1e-6) == (1 - result.unknown >= 0.5 - 1e-5)


def test_nobody_is_certain():
    result = decide(Recognizer(checkpoint()), axis(2))  # the prototype itself
    assert result.best.name == "b/three" and result.matches[0].probability <= MAX_PROBABILITY < 1


def test_what_is_not_speech_is_never_named():
    not_speech = SpeechCheck(False, 0.0, 0.0, "the sound stays level")
    result = decide(Recognizer(checkpoint()), axis(0), not_speech)
    assert result.best is None and not result.speech and result.unknown == 1.0
    assert all(m.probability == 0 for m in result.matches) and "no speech found" in result.notes[0]


def test_enrolled_speakers_compete_with_the_same_rule(tmp_path):
    recognizer = Recognizer(checkpoint(), tmp_path / "gallery.json")
    recognizer.gallery.add("ann", axis(3), 5)
    result = decide(recognizer, axis(3) + 0.1 * axis(0))
    assert result.best.name == "ann" and result.best.enrolled
    assert [m.name for m in result.matches][:2] == ["ann", "a/one"]


def test_as_norm_scores_with_the_cohort_and_its_own_thresholds(tmp_path):
    cohort = F.normalize(torch.randn(40, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    calibration = {**CALIBRATION, "score": {"kind": "as-norm", "top_k": 10},
                   "identification": {"threshold": 2.0, "method": "made up"}}
    saved = tmp_path / "cohort.pt"
    save_checkpoint(checkpoint(calibration, cohort), saved)
    loaded = load_checkpoint(saved)  # weights_only loading keeps the cohort
    assert torch.equal(loaded.cohort, cohort)
    recognizer = Recognizer(loaded)
    embedding = F.normalize(axis(0) + 0.3 * axis(4), dim=-1)
    result = decide(recognizer, embedding)
    expected = Scorer(cohort, 10).score(embedding[None], torch.eye(6)[:3])[0]
    scores = {m.name: m.score for m in result.matches}
    assert [scores[s] for s in SPEAKERS] == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.score_kind == "as-norm" and result.matches[0].cosine == pytest.approx(float(embedding[0]), abs=1e-5)
    assert (result.best is not None) == (float(expected.max()) >= 2.0)


def test_enrolled_speakers_clips_normalise_the_other_speakers_scores(tmp_path):
    cohort = F.normalize(torch.randn(40, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    calibration = {**CALIBRATION, "score": {"kind": "as-norm", "top_k": 10},
                   "identification": {"threshold": 2.0, "method": "made up"}}
    recognizer = Recognizer(checkpoint(calibration, cohort), tmp_path / "gallery.json")
    ann = F.normalize(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    recognizer.gallery.add("ann", F.normalize(ann.mean(0), dim=-1), 3, clip_embeddings=ann)
    bob = F.normalize(axis(4) + 0.2 * axis(5), dim=-1)
    recognizer.gallery.add("bob", bob, 1)  # enrolled before clips were kept: its voiceprint is its one clip
    embedding = F.normalize(axis(0) + 0.3 * axis(4), dim=-1)
    names, scores = recognizer.scores(embedding)[:2]
    scores = dict(zip(names, scores.tolist()))
    enrolled = recognizer.gallery.enrolled()
    candidates = torch.cat([torch.eye(6)[:3], enrolled.embeddings])
    for j, name in enumerate(SPEAKERS + ["ann", "bob"]):
        others = torch.cat([cohort, enrolled.clips[enrolled.owners + 3 != j]])
        expected = Scorer(others, 10).score(embedding[None], candidates[j:j + 1])[0, 0]
        assert scores[name] == pytest.approx(float(expected), abs=1e-5)
    assert torch.allclose(enrolled.clips[:3], ann, atol=1e-6) and enrolled.owners.tolist() == [0, 0, 0, 1]


def test_old_calibration_records_still_work():
    recognizer = Recognizer(checkpoint({"threshold": 0.5, "eer": 0.08, "method": "EER point"}))
    decisions = recognizer.decisions
    assert recognizer.threshold == recognizer.verification_threshold == 0.5
    assert decisions.verification.calibrated and not decisions.identification.calibrated
    assert not decisions.probability_calibrated and decisions.temperature == pytest.approx(1 / 30)
    assert decide(recognizer, axis(0) + 0.5 * axis(3)).best.name == "a/one"  # cosine 0.89 >= 0.5
    uncalibrated = Recognizer(checkpoint({}))
    assert uncalibrated.threshold == 0.5 and not uncalibrated.decisions.identification.calibrated


def test_a_calibration_that_does_not_fit_the_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="no cohort"):
        Recognizer(checkpoint({**CALIBRATION, "score": {"kind": "as-norm"}}))
    with pytest.raises(ValueError, match="positive slope"):
        Decisions.from_calibration({**CALIBRATION, "probability": {"slope": -1, "temperature": 1}}, False)


def test_a_cohort_of_the_wrong_width_is_refused(tmp_path):
    saved = tmp_path / "bad.pt"
    save_checkpoint(checkpoint(CALIBRATION, torch.randn(10, 5)), saved)
    with pytest.raises(CheckpointError, match="cohort must be a"):
        load_checkpoint(saved)
