"""Not speech is never named: the speech check, and the shipped model on tones, noise and made-up features."""

import numpy as np
import pytest
import torch

from speaker_app.checkpoint import load_checkpoint
from speaker_app.features import FeatureConfig, features_from_array, features_from_file
from speaker_app.recognizer import InputError, Recognizer
from speaker_app.speech import check_speech
from tests.conftest import speechlike, speechlike_features, voiced

RATE = 16000


def tone(hz: float, seconds: float = 3.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def noise(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def features(wave: np.ndarray) -> torch.Tensor:
    return features_from_array(wave, RATE, FeatureConfig())


NOT_SPEECH = {  # name -> a source the recognizer takes
    "1 kHz sine": (RATE, tone(1000)),
    "white noise": (RATE, noise()),
    "constant (300, 40) tensor": torch.full((300, 40), -5.0),
    "random (300, 40) log-mel-like tensor": torch.randn(300, 40, generator=torch.Generator().manual_seed(0)) * 3 - 5,
}


@pytest.mark.parametrize("made", [
    lambda: features(tone(1000)), lambda: features(tone(220, 0.5)), lambda: features(tone(3000)),
    lambda: features(noise()), lambda: features(noise(0.4, seed=1)), lambda: features(tone(1000) + 0.1 * noise()),
    lambda: features(voiced(2.0)),  # a steady buzz
    lambda: torch.zeros(300, 40), lambda: torch.full((50, 40), -12.0),
    lambda: torch.randn(300, 40), lambda: torch.randn(12, 40) * 3 - 5, lambda: torch.rand(500, 40) * 20 - 15,
])
def test_tones_noise_and_made_up_features_are_not_speech(made):
    check = check_speech(made())
    assert not check.speech and check.reason


def test_speech_like_input_passes():
    assert check_speech(features(speechlike(2.0))).speech
    assert check_speech(speechlike_features(150, seed=2)).speech


def test_real_speech_of_every_source_passes(speech_dir):
    config = FeatureConfig()
    for source in ("vcc2016", "emodb", "fsdd", "asterisk"):
        clips = sorted((speech_dir / source).glob("*/*.flac"))
        clips = [c for c in clips if "silence" not in c.name and "tone" not in c.name][::40]
        for clip in clips:
            check = check_speech(features_from_file(clip, config))
            assert check.speech, (clip, check)


@pytest.fixture(scope="module")
def shipped(default_checkpoint) -> Recognizer:
    return Recognizer(load_checkpoint(default_checkpoint))


@pytest.mark.parametrize("name", NOT_SPEECH)
def test_the_shipped_model_never_names_what_is_not_speech(shipped, name, tmp_path):
    result = shipped.identify(NOT_SPEECH[name])
    assert result.best is None and not result.speech and result.unknown == 1.0
    enrolling = Recognizer(shipped.checkpoint, tmp_path / "gallery.json")
    with pytest.raises(InputError, match="holds no speech"):
        enrolling.enroll("tone", [NOT_SPEECH[name]])
    assert enrolling.gallery.names() == []


def test_the_shipped_model_still_names_real_held_out_clips(shipped, speech_dir):
    clips = shipped.checkpoint.info["training_data"]["held_out_clips"][::12]  # about fifty, every source

    def named(clip):
        try:
            return shipped.identify(speech_dir / clip).best
        except InputError:  # a few digits of fsdd are shorter than the app's 0.3 s
            return None

    correct = [(best := named(clip)) is not None and best.name == clip.rsplit("/", 1)[0] for clip in clips]
    assert sum(correct) / len(clips) >= 0.9, [c for c, ok in zip(clips, correct) if not ok]
