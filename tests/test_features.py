import shutil
import subprocess

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from speaker_app.features import (AudioError, FeatureConfig, aligned_features, features_from_array,
                                  features_from_file, features_from_wave, log_mel, peak_normalise, read_audio,
                                  remove_silence, to_mono)
from tests.conftest import voiced

CONFIG = FeatureConfig()


def test_config_is_the_course_recipe():
    assert (CONFIG.sample_rate, CONFIG.n_fft, CONFIG.win_length, CONFIG.hop_length) == (16000, 400, 400, 160)
    assert (CONFIG.f_min, CONFIG.f_max, CONFIG.n_mels, CONFIG.log_floor) == (50.0, None, 40, 1e-9)
    assert (CONFIG.norm_db, CONFIG.silence_threshold, CONFIG.silence_duration) == (-3.0, 0.01, 0.1)
    assert FeatureConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="unknown"):
        FeatureConfig.from_dict({**CONFIG.to_dict(), "n_bins": 3})


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """The course's log-mel written independently: numpy STFT and librosa's HTK filters."""
    padded = np.pad(wave, 200, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    window = np.hanning(401)[:-1]  # periodic Hann, as torch.hann_window
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    filters = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40, fmin=50, fmax=8000, htk=True, norm=None)
    return np.log(np.maximum(power @ filters.T, 1e-9))


def test_log_mel_of_a_known_signal():
    t = np.arange(8000) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    features = log_mel(wave, CONFIG)
    assert features.shape == (1 + 8000 // 160, 40) and features.dtype == torch.float32
    np.testing.assert_allclose(features.numpy(), reference_log_mel(wave), atol=2e-3, rtol=1e-4)
    peak_hz = librosa.mel_frequencies(42, fmin=50, fmax=8000, htk=True)[1:-1][features[25].argmax()]
    assert abs(peak_hz - 1000) < 60
    silent = log_mel(np.zeros(1600, np.float32), CONFIG)
    assert torch.allclose(silent, torch.full_like(silent, float(np.log(1e-9))))


def pauses_signal():
    gap = lambda s: np.zeros(int(s * 16000), np.float32)  # noqa: E731
    return np.concatenate([gap(0.3), voiced(0.5), gap(0.05), voiced(0.4, seed=1), gap(0.5),
                           voiced(0.3, seed=2), gap(0.2)])


def test_silence_removal_semantics():
    out = remove_silence(pauses_signal(), 16000)
    # 1.25 s of tone and the 0.05 s pause stay; the leading, 0.5 s and trailing silences go but for
    # the 20 ms RMS window's tail after each segment, less a few ms of onset.
    kept = len(out) / 16000
    assert 1.27 < kept < 1.3
    assert remove_silence(np.zeros(16000, np.float32), 16000).size == 0


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed (apt-get install sox)")
def test_silence_removal_matches_sox(tmp_path):
    wave = pauses_signal() * 0.5
    sf.write(tmp_path / "in.wav", wave, 16000, subtype="FLOAT")
    sox(tmp_path / "in.wav", tmp_path / "out.wav")
    expected, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    ours = remove_silence(read_audio(tmp_path / "in.wav", 16000) * np.float32(10 ** (-3 / 20) / np.abs(wave).max()), 16000)
    assert len(ours) == len(expected)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def sox(source, target):
    subprocess.run(["sox", str(source), "-e", "floating-point", "-b", "32", str(target), "channels", "1",
                    "rate", "16000", "norm", "-3", "silence", "1", "0.1", "1%", "-1", "0.1", "1%"], check=True)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed (apt-get install sox)")
def test_pipeline_matches_sox_on_real_clips(speech_dir, tmp_path):
    for speaker in ["vcc2016/SF1", "fsdd/george", "asterisk/june", "emodb/03"]:
        clip = sorted((speech_dir / speaker).glob("*.flac"))[0]
        sox(clip, tmp_path / "out.wav")
        expected, _ = sf.read(tmp_path / "out.wav", dtype="float32")
        ours = features_from_file(clip, CONFIG)
        assert ours.shape == (1 + len(expected) // 160, 40), clip
        # sox's and soxr's resamplers differ slightly; the features agree closely.
        assert (ours - log_mel(expected, CONFIG)).abs().median() < 0.05, clip


def test_any_rate_and_channel_count_give_the_same_features(tmp_path):
    wave16 = np.concatenate([voiced(1.0), np.zeros(4000, np.float32)])
    reference = features_from_wave(wave16, CONFIG)
    for rate, channels in [(8000, 1), (44100, 2), (48000, 6)]:
        wave = librosa.resample(wave16, orig_sr=16000, target_sr=rate)
        path = tmp_path / f"x{rate}.wav"
        sf.write(path, np.repeat(wave[:, None], channels, axis=1), rate)
        features = features_from_file(path, CONFIG)
        assert abs(len(features) - len(reference)) <= 2
        n = min(len(features), len(reference))
        # 8 kHz loses the band above 4 kHz; below it the features match.
        low = slice(0, 29) if rate == 8000 else slice(None)
        assert (features[:n, low] - reference[:n, low]).abs().median() < 0.1, rate


@pytest.mark.parametrize("fmt", ["flac", "ogg", "mp3"])
def test_common_formats_decode(tmp_path, fmt):
    path = tmp_path / f"x.{fmt}"
    sf.write(path, voiced(1.0, rate=22050), 22050, format=fmt.upper())
    assert features_from_file(path, CONFIG).shape[1] == 40


def test_in_memory_int16_stereo_equals_float():
    wave = voiced(1.0)
    as_int = (np.stack([wave, wave], axis=1) * 32768).astype(np.int16)
    assert torch.allclose(features_from_array(as_int, 16000, CONFIG), features_from_wave(wave, CONFIG), atol=0.05)


def test_long_file_read_in_blocks(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.tile(voiced(1.0, rate=48000), 30), 48000)
    assert len(read_audio(path, 16000, block_seconds=2.0)) == 30 * 16000
    assert len(read_audio(path, 16000, max_seconds=5)) == 5 * 16000


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00garbage" * 10, bytes(range(256)) * 40])
def test_bad_files_raise_audio_error(tmp_path, content):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="bad.wav"):
        features_from_file(path, CONFIG)


def test_silence_and_nan_raise_audio_error():
    with pytest.raises(AudioError, match="no speech"):
        features_from_wave(np.zeros(16000, np.float32), CONFIG)
    with pytest.raises(AudioError, match="NaN"):
        to_mono(np.full(100, np.nan, np.float32), 16000, 16000)


def test_aligned_features_are_the_pipelines_on_speech_it_keeps_whole():
    """Loud from the first sample to the last, so the silence rule keeps all of it: the time-aligned variant
    (diarization's) must then give exactly the features of the one pipeline, normalisation included."""
    t = np.arange(16000) / 16000
    wave = (0.2 * np.sign(np.cos(2 * np.pi * 140 * t) + 0.1)).astype(np.float32)
    assert len(remove_silence(peak_normalise(wave, CONFIG.norm_db), 16000)) == len(wave)
    aligned = aligned_features(wave, CONFIG)
    assert aligned.shape == (1 + len(wave) // 160, 40)
    assert torch.equal(aligned, features_from_wave(wave, CONFIG))
    quiet = aligned_features(wave * 0.1, CONFIG)  # peak-normalised: the level does not matter
    assert torch.allclose(quiet, aligned, atol=1e-4)
    with pytest.raises(AudioError, match="too short"):
        aligned_features(wave[:100], CONFIG)
