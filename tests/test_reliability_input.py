"""Bad and unusual input beyond tests/test_app.py's table: noise, every common rate and channel count,
ten minutes of audio, in-memory recordings, names that look like paths, and the training CLIs
(prepare, predict, evaluate) fed broken clips and feature files. Each gives an answer or a clear
message, and the program goes on with the next input."""

import json
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from speaker_app.checkpoint import save_checkpoint
from speaker_app.features import read_audio
from speaker_app.inference import CHUNK_FRAMES
from speaker_app.recognizer import InputError, Recognizer
from tests.conftest import speechlike_features, voiced
from tests.helpers import tiny
from tests.test_app import untrained  # noqa: F401  (a fixture)
from tests.test_distributed import synthetic_course
from training import evaluate, predict, prepare

@pytest.fixture
def recognizer(tmp_path):
    return Recognizer(tiny(speakers=["a/one", "a/two", "b/three"]), tmp_path / "gallery.json")


def test_white_noise_gets_an_answer_not_an_error(untrained, recognizer, tmp_path):
    path = tmp_path / "noise.wav"
    sf.write(path, 0.3 * np.random.default_rng(0).standard_normal(32000).astype(np.float32), 16000)
    result = recognizer.identify(path, top_k=3)
    assert result.seconds == pytest.approx(2.0, abs=0.05)  # noise is loud: nothing is removed as silence
    assert not result.speech and result.best is None and result.unknown == 1.0  # the answer: no speech, nobody named
    assert sum(m.probability for m in result.matches) == 0.0
    label, verdict, *_ = untrained.identify(str(path), None, 3)
    assert len(label) == 3 + 1 and "Analysed 2.0" in verdict and "### No speech found" in verdict


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_any_rate_and_channel_count_gives_the_same_features(recognizer, tmp_path, rate, channels):
    wave = voiced(1.0)
    reference, _ = recognizer.features((16000, wave))
    at_rate = soxr.resample(wave, 16000, rate) if rate != 16000 else wave
    # Channels that differ only in gain: their mean is the same signal up to a gain that peak
    # normalisation removes.
    path = tmp_path / "clip.wav"
    sf.write(path, np.stack([at_rate * (1 - 0.1 * c) for c in range(channels)], axis=1), rate, subtype="FLOAT")
    features, notes = recognizer.features(path)
    assert notes == [] and abs(len(features) - len(reference)) <= 2
    frames = min(len(features), len(reference))
    # Away from the band edges a resampled signal has the same log-mel energies, up to a gain (peak
    # normalisation sees the peak of a band-limited signal at 8 kHz).
    middle = slice(2, 36 if rate > 8000 else 30)
    difference = features[:frames, middle] - reference[:frames, middle]
    assert (difference - difference.median()).abs().median() < 0.05


@pytest.mark.parametrize("source, message", [
    ((0, np.ones(16000)), "no valid sample rate"), ((-16000, np.ones(16000)), "no valid sample rate"),
    ((16000, np.ones((100, 2, 2))), r"\(samples,\) or \(samples, channels\)"), ((16000, np.zeros(0)), "too short"),
    ((16000, np.zeros(1600)), "too short: 0.10 s"),
])
def test_bad_in_memory_recordings(recognizer, source, message):
    with pytest.raises(InputError, match=message):
        recognizer.identify(source)
    assert recognizer.identify((16000, voiced(1.0))).matches  # and the next one is answered


def test_ten_minutes_are_read_in_blocks_and_scored_in_chunks(recognizer, tmp_path):
    path = tmp_path / "ten-minutes.wav"
    block = voiced(10.0, rate=48000)
    with sf.SoundFile(path, "w", 48000, 2, "PCM_16") as handle:  # 115 MB: 48 kHz stereo
        for _ in range(61):  # ten minutes and ten seconds
            handle.write(np.stack([block, 0.5 * block], axis=1))
    tracemalloc.start()
    try:
        wave = read_audio(path, 16000, max_seconds=600)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(wave) == 600 * 16000
    # Decoding all of it at once would take 600 s x 48000 x 2 x 4 bytes = 230 MB; blocks keep the
    # peak near the 16 kHz mono result (38 MB).
    assert peak < 2.5 * wave.nbytes, f"peak {peak / 1e6:.0f} MB"

    seen = []
    embed = recognizer.model.embed
    recognizer.model.embed = lambda features, lengths: seen.append(features.shape[1]) or embed(features, lengths)
    result = recognizer.identify(torch.randn(60000, 40))  # ten minutes of frames
    assert result.seconds == pytest.approx(600) and max(seen) <= CHUNK_FRAMES


def test_names_that_look_like_paths_stay_names(recognizer, tmp_path):
    clip = [speechlike_features(100)]
    assert recognizer.enroll("../../etc/passwd", clip) == "etc passwd"
    assert recognizer.enroll("..\\..\\gallery.json", clip) == "gallery.json"
    assert recognizer.enroll(" . ./ann", clip) == "ann"
    with pytest.raises(InputError, match="at most 64 characters, got 500"):
        recognizer.enroll("é" * 500, clip)
    # Names are keys inside the one gallery file (and its previous copy), never parts of a path.
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["gallery.json", "gallery.json.prev"]
    stored = json.loads((tmp_path / "gallery.json").read_text())["speakers"]
    assert sorted(stored) == ["ann", "etc passwd", "gallery.json"]


# -- the training command lines -------------------------------------------------------------
def write_clip_folder(root):
    """Two speakers with good clips in several rates and channel counts, and one bad clip of each kind."""
    good = {"spk/a/8k.flac": (voiced(1.0, 8000), 8000), "spk/a/96k-6ch.wav": (voiced(1.0, 96000, 120), 96000),
            "spk/b/44k-2ch.wav": (voiced(1.0, 44100, 200), 44100), "spk/b/11k.wav": (voiced(1.0, 11025, 210), 11025)}
    for name, (wave, rate) in good.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        channels = 6 if "6ch" in name else 2 if "2ch" in name else 1
        sf.write(root / name, np.stack([wave] * channels, axis=1), rate)
    bad = {"spk/a/empty.wav": "is empty|holds no audio|cannot decode", "spk/a/zero.wav": "holds no audio",
           "spk/a/short.wav": "no speech", "spk/b/silence.flac": "no speech",
           "spk/b/corrupt.flac": "cannot decode", "spk/b/not-audio.mp3": "cannot decode"}
    (root / "spk/a/empty.wav").write_bytes(b"")
    sf.write(root / "spk/a/zero.wav", np.zeros(0, np.float32), 16000)
    sf.write(root / "spk/a/short.wav", voiced(0.1), 16000)
    sf.write(root / "spk/b/silence.flac", np.zeros(16000, np.float32), 16000)
    (root / "spk/b/corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    (root / "spk/b/not-audio.mp3").write_text("<html>not found</html>")
    (root / "spk/b/notes.txt").write_text("not an audio suffix: not even considered")
    return good, bad


def test_prepare_and_evaluate_skip_bad_clips_with_reasons(tmp_path, capsys):
    good, bad = write_clip_folder(tmp_path / "clips")
    assert prepare.main([str(tmp_path / "clips"), str(tmp_path / "data"), "--test-fraction", "0",
                         "--workers", "1", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "4 clips of 2 speakers" in out and "6 skipped" in out
    for name, reason in bad.items():
        line = next(line for line in err.splitlines() if line.startswith(f"skipped {name}:"))
        assert any(part in line for part in reason.split("|")), line
    assert len(list((tmp_path / "data").glob("uttr-*.pt"))) == len(good)

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(tiny(speakers=["spk/a", "spk/b"]), checkpoint)
    result = evaluate.evaluate(checkpoint, audio_dir=tmp_path / "clips", include=["spk/*"], progress=False)
    assert result["n"] == len(good)
    assert capsys.readouterr().err.count("skipped ") == len(bad)


BAD_FEATURES = {
    "transposed": (torch.randn(40, 120), "expected a (T, 40) tensor, got (40, 120) (it looks transposed)"),
    "80 bins": (torch.randn(120, 80), "expected a (T, 40) tensor, got (120, 80)"),
    "1-D": (torch.randn(120), "expected a (T, 40) tensor, got (120,)"),
    "3-D": (torch.randn(1, 120, 40), "expected a (T, 40) tensor, got (1, 120, 40)"),
    "integers": (torch.ones(120, 40, dtype=torch.int16), "floating-point log-mel values, got torch.int16"),
    "NaN": (torch.full((120, 40), float("nan")), "contains NaN or infinite values"),
    "Inf": (torch.full((120, 40), float("inf")), "contains NaN or infinite values"),
    "not a tensor": ({"features": torch.randn(120, 40)}, "expected a (T, 40) tensor, got dict"),
    "damaged": (None, "cannot load"),
}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course-layout folder whose test set is three of its labelled utterances, and a tiny model of it."""
    root = synthetic_course(tmp_path_factory.mktemp("course"), per_speaker=4)
    metadata = json.loads((root / "metadata.json").read_text())["speakers"]
    tests = [items[0] for items in metadata.values()]
    (root / "testdata.json").write_text(json.dumps({"n_mels": 40, "utterances": tests}))
    labels = [f"{u['feature_path']},{name}" for name, items in metadata.items() for u in items[:1]]
    (root / "test_labels.csv").write_text("\n".join(["Id,Category", *labels]) + "\n")
    checkpoint = root.parent / "tiny.pt"
    save_checkpoint(tiny(speakers=sorted(metadata)), checkpoint)
    return root, checkpoint, tests


@pytest.mark.parametrize("kind", list(BAD_FEATURES))
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_feature_files_the_clis_refuse(course, kind, command, tmp_path):
    root, checkpoint, tests = course
    target = root / tests[1]["feature_path"]
    original = target.read_bytes()
    value, message = BAD_FEATURES[kind]
    try:
        if value is None:
            target.write_bytes(original[: len(original) // 2])
        else:
            torch.save(value, target)
        run = (lambda: predict.main(["--checkpoint", str(checkpoint), "--data", str(root),
                                     "--out", str(tmp_path / "out.csv")])) if command == "predict" else (
            lambda: evaluate.evaluate(checkpoint, data=root, split="test", progress=False))
        with pytest.raises(SystemExit) as caught:
            run()
        assert str(caught.value).startswith(f"error: cannot load {target.name}" if value is None
                                            else f"error: {target.name}") and message in str(caught.value)
        assert not (tmp_path / "out.csv").exists()
    finally:
        target.write_bytes(original)


def test_predict_scores_a_one_frame_utterance(course, tmp_path):
    """The course's test set must get a prediction per row; one frame is enough for the model."""
    root, checkpoint, tests = course
    target = root / tests[0]["feature_path"]
    original = target.read_bytes()
    try:
        torch.save(torch.randn(1, 40) - 4, target)
        assert predict.main(["--checkpoint", str(checkpoint), "--data", str(root), "--out", str(tmp_path / "p.csv")]) == 0
    finally:
        target.write_bytes(original)
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + len(tests) and rows[1].startswith(tests[0]["feature_path"] + ",")
