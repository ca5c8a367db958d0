"""The app's handlers called directly: feature files, audio at several rates, plots, enrollment,
verification and bad input (each a clear `gr.Error`, never a stack trace)."""

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import app
from speaker_app import describe, plots
from speaker_app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig, features_from_file
from speaker_app.model import ModelConfig
from speaker_app.recognizer import Recognizer
from speaker_app.registry import build_model
from tests.conftest import example_rows, voiced

EXAMPLES = Path(app.EXAMPLES)
ALLISON = EXAMPLES / "asterisk-allison_en-US_followme-status.flac"
ALLISON_FEATURES = EXAMPLES / "asterisk-allison_es-MX_spy-h323.pt"
JUNE = EXAMPLES / "asterisk-june_fr-CA_vm-whichbox.flac"
MENARDI = EXAMPLES / "asterisk-menardi_it-IT_confbridge-pin-bad.flac"


@pytest.fixture(scope="module")
def trained(default_checkpoint) -> Checkpoint:
    return load_checkpoint(default_checkpoint)


@pytest.fixture
def handlers(trained, tmp_path) -> app.Handlers:
    return app.Handlers(Recognizer(trained, tmp_path / "gallery.json"))


@pytest.fixture
def untrained(tmp_path) -> app.Handlers:
    """A small random model: input handling does not depend on training."""
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16)
    checkpoint = Checkpoint(config, FeatureConfig(), ["a/one", "a/two", "b/three"],
                            build_model(config, 3).state_dict())
    return app.Handlers(Recognizer(checkpoint, tmp_path / "gallery.json"))


@pytest.fixture(scope="module")
def allison_embedding(trained) -> torch.Tensor:
    return Recognizer(trained).embed(ALLISON)


def colorbar_labels(figure) -> list[str]:
    return [axes.get_ylabel() for axes in figure.axes if axes.get_label() == "<colorbar>"]


def test_feature_file_gives_top_k_and_readable_plots(handlers):
    label, verdict, features_plot, attention_plot, explanation = handlers.identify(None, str(ALLISON_FEATURES), 3)
    assert list(label)[0] == "asterisk/allison" and len(label) == 3 + 1 and describe.UNKNOWN in label
    assert list(label.values()) == sorted(label.values(), reverse=True) and sum(label.values()) <= 1 + 1e-6
    assert "threshold" in verdict and "Analysed 1.76 s" in verdict
    figure = handlers.features_figure(explanation)
    spectrum, pooling = [a for a in figure.axes if a.get_label() != "<colorbar>"]
    assert spectrum.get_ylabel() == "mel bin" and "time (s)" in pooling.get_xlabel()
    assert colorbar_labels(figure) == ["log energy"]
    assert pooling.get_xlim() == pytest.approx((0, 1.76)) and spectrum.get_xlim() == pytest.approx((0, 1.76))
    figure = handlers.attention_figure(explanation)
    (heatmap,) = [a for a in figure.axes if a.get_label() != "<colorbar>"]
    assert heatmap.get_title() == "Self-attention, layer 1, mean of all heads"
    assert heatmap.get_xlabel().endswith(", s") and heatmap.get_ylabel().endswith(", s")
    assert colorbar_labels(figure)[0].startswith("attention weight")
    assert len(explanation.attention) == handlers.recognizer.checkpoint.model_config.n_layers
    # The page gets those figures rendered, drawn into figures kept from earlier answers.
    assert features_plot == app.picture(plots.png(handlers.features_figure(explanation)))
    assert attention_plot == app.picture(plots.png(handlers.attention_figure(explanation)))


def test_kept_figures_draw_what_new_ones_draw(handlers):
    """A kept figure that showed another clip before (longer, another layer and head) draws the same pixels."""
    *_, longer = handlers.identify(str(MENARDI), None, 3, 3, 2)
    *_, explanation = handlers.identify(None, str(ALLISON_FEATURES), 3)
    assert len(longer.pooling) != len(explanation.pooling)
    assert handlers.plots(explanation, 2, 1) == (app.picture(plots.png(handlers.features_figure(explanation))),
                                                 app.picture(plots.png(handlers.attention_figure(explanation, 2, 1))))


def test_each_layer_and_head_can_be_shown(handlers):
    *_, explanation = handlers.identify(None, str(ALLISON_FEATURES), 3)
    figure = handlers.attention_figure(explanation, 3, 2)
    (heatmap,) = [a for a in figure.axes if a.get_label() != "<colorbar>"]
    assert heatmap.get_title() == "Self-attention, layer 3, head 2"
    shown = np.asarray(heatmap.images[0].get_array())
    assert np.allclose(shown, explanation.attention[2][1].numpy())
    assert heatmap.get_xlim() == pytest.approx((0, len(explanation.pooling) * explanation.frame_seconds))
    assert handlers.show_attention(explanation, 3, 2) == app.picture(plots.png(figure))
    assert handlers.show_attention(None, 1, 1) is None


@pytest.mark.parametrize("rate, channels, suffix", [
    (8000, 1, ".flac"), (11025, 1, ".wav"), (16000, 1, ".wav"), (22050, 2, ".flac"), (44100, 1, ".wav"),
    (44100, 2, ".wav"), (48000, 6, ".wav"), (96000, 1, ".flac"), (16000, 2, ".ogg")])
def test_audio_at_any_rate_and_channel_count(handlers, allison_embedding, tmp_path, rate, channels, suffix):
    wave, original = sf.read(ALLISON, dtype="float32")
    wave = soxr.resample(wave, original, rate) if rate != original else wave
    if channels > 1:
        wave = np.stack([wave * (1 - 0.1 * c) for c in range(channels)], axis=1)
    path = tmp_path / f"clip{suffix}"
    sf.write(path, wave, rate)
    label, verdict, *_ = handlers.identify(str(path), None, 5)
    assert list(label)[0] == "asterisk/allison"
    # The same speech at another rate or channel count gives nearly the same embedding.
    similarity = float(handlers.recognizer.embed(path) @ allison_embedding)
    assert similarity > 0.9


def test_a_feature_file_wins_over_audio(handlers):
    label, *_ = handlers.identify(str(MENARDI), str(ALLISON_FEATURES), 1)
    assert list(label) == ["asterisk/allison", describe.UNKNOWN]


def write_bad_input(kind: str, folder: Path) -> str | None:
    path = folder / {"empty": "empty.wav", "zero-length": "zero.wav", "corrupt": "corrupt.flac",
                     "unsupported": "clip.m4a", "shape": "shape.pt", "transposed": "t.pt", "1-D": "1d.pt",
                     "3-D": "3d.pt", "dtype": "int.pt", "nan": "nan.npy", "inf": "inf.pt", "one-frame": "one.npy",
                     "object": "object.pt", "silence": "silence.wav", "short": "short.wav",
                     "nan-audio": "nan.wav"}.get(kind, "none")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "zero-length":
        sf.write(path, np.zeros(0, np.float32), 16000)  # a valid header, no samples
    elif kind == "corrupt":
        path.write_bytes(b"fLaC" + bytes(range(256)) * 8)
    elif kind == "unsupported":
        path.write_bytes(b"\0\0\0\x18ftypM4A " + bytes(500))  # AAC in MP4: libsndfile does not read it
    elif kind == "shape":
        torch.save(torch.randn(100, 80), path)
    elif kind == "transposed":
        torch.save(torch.randn(40, 300), path)
    elif kind == "1-D":
        torch.save(torch.randn(4000), path)
    elif kind == "3-D":
        torch.save(torch.randn(1, 100, 40), path)
    elif kind == "dtype":
        torch.save(torch.ones(100, 40, dtype=torch.int16), path)
    elif kind == "nan":
        features = np.random.default_rng(0).standard_normal((100, 40)).astype(np.float32)
        features[5, 5] = np.nan
        np.save(path, features)
    elif kind == "inf":
        features = torch.randn(100, 40)
        features[7, 3] = -float("inf")
        torch.save(features, path)
    elif kind == "one-frame":
        np.save(path, np.zeros((1, 40), np.float32))
    elif kind == "object":
        torch.save({"features": torch.randn(100, 40)}, path)
    elif kind == "silence":
        sf.write(path, np.zeros(32000, np.float32), 16000)
    elif kind == "short":
        sf.write(path, voiced(0.1), 16000)
    elif kind == "nan-audio":
        wave = voiced(1.0)
        wave[1000:1100] = np.nan
        sf.write(path, wave, 16000, subtype="FLOAT")
    else:
        return None
    return str(path)


@pytest.mark.parametrize("kind, message", [
    ("empty", "is empty"), ("zero-length", "holds no audio"), ("corrupt", "cannot decode"),
    ("unsupported", "cannot decode clip.m4a: Format not recognised"), ("shape", "40 mel bins"),
    ("transposed", "transposed"), ("1-D", "2-D"), ("3-D", "2-D"), ("dtype", "floating-point"), ("nan", "NaN"),
    ("inf", "NaN or infinite"), ("one-frame", "too little speech: 1 frames"), ("object", "must hold a tensor"),
    ("silence", "no speech"), ("short", "too short: 0.10 s"), ("nan-audio", "NaN"), ("nothing", "first"),
])
def test_bad_input_is_a_clear_message(untrained, tmp_path, kind, message):
    path = write_bad_input(kind, tmp_path)
    as_features = path is not None and path.endswith((".pt", ".npy"))
    with pytest.raises(gr.Error, match=message) as caught:
        untrained.identify(None if as_features else path, path if as_features else None, 3)
    assert "Traceback" not in str(caught.value)
    # The handler still answers good input after bad input.
    good = tmp_path / "good.wav"
    sf.write(good, voiced(1.0), 16000)
    label, *_ = untrained.identify(str(good), None, 3)
    assert len(label) == 3 + 1  # and "unknown speaker"


def test_very_long_audio_is_cut_with_a_warning(untrained, tmp_path):
    path = tmp_path / "eleven-minutes.flac"
    sf.write(path, np.tile(voiced(6.0, rate=8000), 110), 8000)  # 11 minutes
    with pytest.warns(UserWarning, match="only the first 10 minutes were analysed"):
        _, verdict, *_ = untrained.identify(str(path), None, 3)
    assert "Note: only the first 10 minutes were analysed." in verdict
    seconds = float(verdict.split("Analysed ")[1].split(" s")[0])
    assert 500 < seconds <= 600


def test_enroll_identify_list_and_delete(handlers, speech_dir):
    june = sorted((speech_dir / "asterisk" / "june").glob("*.flac"))
    clips = [str(p) for p in june if p.name != "fr_CA__vm-whichbox.flac"][:3]
    message, rows, menu = handlers.enroll("  June\tagain ", clips)
    assert "Enrolled **June again** from 3 clips" in message
    assert [row[:2] for row in rows] == [["June again", 3]] and menu.choices == [("June again", "June again")]
    label, verdict, *_ = handlers.identify(str(JUNE), None, 5)
    assert "June again (enrolled)" in list(label)[:2] and "asterisk/june" in list(label)[:2]
    message, rows, _ = handlers.enroll("June again", clips[:1], replace=True)
    assert message.startswith("Replaced") and rows[0][1] == 1
    # Enrollment survives a restart: a new recognizer on the same gallery file sees it.
    again = app.Handlers(Recognizer(handlers.recognizer.checkpoint, handlers.recognizer.gallery.path))
    assert again.gallery()[0][0][0] == "June again"
    message, rows, menu = handlers.forget("June again")
    assert message == "Deleted **June again**." and rows == [] and menu.choices == []
    label, *_ = handlers.identify(str(JUNE), None, 5)
    assert not any(name.endswith("(enrolled)") for name in label)


@pytest.mark.parametrize("name, clips, message", [
    ("ann", [], "one to five"), ("ann", ["x"] * 6, "one to five"), ("  / ", [str(ALLISON)], "visible character"),
    ("a/one", [str(ALLISON)], "already one of the model's speakers"),
    ("x" * 500, [str(ALLISON)], "at most 64 characters, got 500"), ("../..", [str(ALLISON)], "visible character"),
])
def test_enroll_refuses_bad_requests(untrained, name, clips, message):
    with pytest.raises(gr.Error, match=message):
        untrained.enroll(name, clips)


def test_enrolled_names_are_shown_literally(untrained):
    message, rows, _ = untrained.enroll("[win](javascript:go) *now*", [str(ALLISON)])
    assert "Enrolled **\\[win\\]\\(javascript:go\\) \\*now\\*** from 1 clip" in message
    assert rows[0][0] == "[win](javascript:go) *now*"
    _, verdict, *_ = untrained.identify(str(ALLISON), None, 5)
    assert "### \\[win\\]\\(javascript:go\\) \\*now\\*\n" in verdict


def test_enrollment_advises_when_it_holds_too_little_speech(handlers, speech_dir, tmp_path):
    message, *_ = handlers.enroll("Brief", [str(JUNE)])
    assert "Enrolled **Brief** from 1 clip (" in message and "- **Advice:** only" in message
    # One long recording (Allison's prompts one after another): cut into pieces that agree, enough speech.
    waves = [sf.read(path, dtype="float32") for path in sorted((speech_dir / "asterisk" / "allison").glob("en_US__*.flac"))]
    rate = waves[0][1]
    recording = tmp_path / "paragraph.wav"
    sf.write(recording, np.concatenate([wave for wave, _ in waves])[: 40 * rate], rate)
    message, *_ = handlers.enroll("Reader", [str(recording)])
    assert "cut into 5 pieces" in message and "Advice" not in message


def test_recordings_join_the_enrollment_clips():
    assert app.Handlers.add_recording(["a.wav"], "b.wav") == (["a.wav", "b.wav"], None)
    assert app.Handlers.add_recording(None, None) == ([], None)


def test_verify_reports_the_cosine_and_decides_at_the_threshold(handlers):
    recognizer = handlers.recognizer
    verdict, score = handlers.verify(str(JUNE), str(JUNE))
    assert verdict.startswith("### Same speaker") and score >= recognizer.verification_threshold
    assert score == pytest.approx(1.0, abs=1e-4) if recognizer.scorer.kind == "cosine" else "(cosine 1.000)" in verdict
    verdict, score = handlers.verify(str(ALLISON), str(MENARDI))
    if recognizer.scorer.kind == "cosine":
        assert score == pytest.approx(float(recognizer.embed(ALLISON) @ recognizer.embed(MENARDI)), abs=1e-4)
    same = score >= recognizer.verification_threshold
    assert verdict.startswith("### Same speaker" if same else "### Different speakers")
    assert f"{score:.3f}" in verdict and "Verification threshold" in verdict
    with pytest.raises(gr.Error, match="two clips"):
        handlers.verify(str(JUNE), None)


def test_threshold_note_says_how_it_was_set(untrained):
    recognizer = untrained.recognizer
    assert "default" in describe.threshold_note(recognizer) and "rough guide" in describe.verification_note(recognizer)
    checkpoint = recognizer.checkpoint
    checkpoint.info["calibration"] = {"threshold": 0.41, "eer": 0.052,  # the older record: one clip-vs-clip threshold
                                      "method": "equal-error-rate point on 12 held-out speakers"}
    recognizer = Recognizer(checkpoint)
    assert describe.verification_note(recognizer) == (
        "Verification threshold 0.410 (cosine similarity): equal-error-rate point on 12 held-out speakers "
        "(equal error rate there: 5.2%)")
    assert "not calibrated for clip-vs-speaker identification" in describe.identification_note(recognizer)
    checkpoint.info["calibration"] = {
        "score": {"kind": "cosine"},
        "identification": {"threshold": 0.7,
                           "method": "lowest threshold naming at most 10% of 40 unseen speakers' clips"},
        "verification": {"threshold": 0.5, "method": "equal-error-rate point of 900 clip-vs-clip trials"},
        "probability": {"slope": 12.0, "temperature": 0.05, "method": "fitted on 300 held-out trials"}}
    recognizer = Recognizer(checkpoint)
    assert recognizer.threshold == 0.7 and recognizer.verification_threshold == 0.5
    assert describe.threshold_note(recognizer) == (
        "Identification threshold 0.700 (cosine similarity): lowest threshold naming at most 10% of 40 unseen "
        "speakers' clips. Verification threshold 0.500 (cosine similarity): equal-error-rate point of 900 "
        "clip-vs-clip trials.")
    assert "temperature 0.05" in describe.probability_note(recognizer)


def test_model_summary_names_checkpoint_and_speakers(trained, default_checkpoint):
    summary = describe.model_summary(Recognizer(trained), default_checkpoint)
    assert str(default_checkpoint) in summary and f"The model's {len(trained.speakers)} speakers" in summary
    assert all(speaker.rpartition("/")[2] in summary for speaker in trained.speakers)
    assert "- **asterisk**: allison, carlo" in summary
    assert ("- Embedding windows: a clip longer than 1.2 s is embedded as the mean of half-overlapping windows of "
            "that length") in summary.splitlines()


def test_model_summary_reports_data_accuracy_and_calibration(untrained):
    checkpoint = untrained.recognizer.checkpoint
    checkpoint.info.update({
        "data": "runs/default/data", "n_train": 2189, "n_valid": 253,
        "training_data": {"sources": {"asterisk": "Asterisk prompts, CC BY-SA 3.0"},
                          "held_out": "20% of each speaker", "command": "python -m training.default_model"},
        "evaluation": {"top1": 0.9, "top5": 0.99, "n": 612, "per_source": {"asterisk": {"top1": 0.8, "n": 120}}},
        "new_speakers": {"speakers": ["asterisk/june"], "enroll_top1": 0.75, "enroll_clips": 5,
                         "enroll_test_clips": 40},
        "calibration": {"threshold": 0.62, "eer": 0.08, "method": "EER point on 1 unheard speaker"},
    })
    checkpoint.metrics["valid_top1"] = 0.5
    summary = describe.model_summary(Recognizer(checkpoint), "x.pt")
    for line in ["- Training data (2189 train clips, 253 valid clips):",
                 "  - **asterisk**: Asterisk prompts, CC BY-SA 3.0",
                 "- Held out from training: 20% of each speaker", "- Made by: `python -m training.default_model`",
                 "- Accuracy on 612 held-out clips: top-1 90.0%, top-5 99.0%", "  - asterisk: top-1 80.0% on 120 clips",
                 "- New voices (asterisk/june), unheard by a model of the same recipe: enrolled from 5 clips each, "
                 "then identified 75.0% of 40 clips",
                 "- Verification: Verification threshold 0.620 (cosine similarity): EER point on 1 unheard speaker "
                 "(equal error rate there: 8.0%).", "- Scores: cosine similarity"]:
        assert line in summary.splitlines()
    assert "Validation accuracy" not in summary  # the held-out evaluation takes its place


def test_demo_exposes_the_api(untrained):
    demo = app.build_demo(untrained.recognizer, "tiny.pt")
    names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert names == {"identify", "enroll", "forget", "verify", "diarize", "enroll_found"}
    assert isinstance(app.demo, gr.Blocks)


@pytest.mark.parametrize("env, host, port", [({}, "127.0.0.1", None),
                                             ({"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7999"},
                                              "0.0.0.0", 7999)])
def test_main_binds_loopback_unless_told_and_limits_uploads(untrained, tmp_path, monkeypatch, env, host, port):
    save_checkpoint(untrained.recognizer.checkpoint, tmp_path / "tiny.pt")
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    assert app.main(["--checkpoint", str(tmp_path / "tiny.pt"), "--gallery", str(tmp_path / "gallery")]) == 0
    assert launched["server_name"] == host and launched["server_port"] == port
    assert launched["max_file_size"] == app.MAX_UPLOAD and not launched.get("share")
    assert "echoCancellation: false" in launched["head"]


def test_model_threads_default_to_half_the_cores_and_can_be_set(untrained, tmp_path, monkeypatch):
    save_checkpoint(untrained.recognizer.checkpoint, tmp_path / "tiny.pt")
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    monkeypatch.setattr(app.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    threads = torch.get_num_threads()
    try:
        assert app.default_threads() == 3
        assert app.main(["--checkpoint", str(tmp_path / "tiny.pt"), "--gallery", str(tmp_path / "g")]) == 0
        assert torch.get_num_threads() == 3
        assert app.main(["--checkpoint", str(tmp_path / "tiny.pt"), "--gallery", str(tmp_path / "g"),
                         "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        with pytest.raises(SystemExit):
            app.main(["--checkpoint", str(tmp_path / "tiny.pt"), "--threads", "0"])
    finally:
        torch.set_num_threads(threads)


def test_missing_checkpoint_exits_with_a_message(tmp_path, capsys):
    assert app.main(["--checkpoint", str(tmp_path / "nothing.pt"), "--gallery", str(tmp_path)]) == 1
    assert "no checkpoint at" in capsys.readouterr().err


def test_examples_are_documented_and_committable():
    rows = example_rows()
    readme = (EXAMPLES / "README.md").read_text()
    assert len(rows) >= 4 and any(r["file"].endswith(".pt") for r in rows)
    for row in rows:
        assert (EXAMPLES / row["file"]).is_file() and row["file"] in readme
        assert row["clip"].startswith("asterisk/") and row["speaker"] == row["clip"].rsplit("/", 1)[0]
        assert row["licence"] == "CC BY-SA 3.0" and row["author"] and row["author"] in readme
    features = torch.load(EXAMPLES / [r["file"] for r in rows if r["file"].endswith(".pt")][0], weights_only=True)
    assert features.dtype == torch.float32 and features.dim() == 2 and features.shape[1] == 40


def test_examples_come_from_their_clips(speech_dir):
    for row in example_rows():
        clip = speech_dir / row["clip"]
        if row["file"].endswith(".pt"):
            made = features_from_file(clip, FeatureConfig())
            stored = torch.load(EXAMPLES / row["file"], weights_only=True)
            # Not bit-exact: log-mel values near the floor (mel power about 1e-9, log -20) differ by up
            # to 0.02 between CPUs, whose FFTs round differently (AVX2 on AMD EPYC, AVX-512 on Xeon).
            assert stored.shape == made.shape and torch.allclose(stored, made, rtol=0, atol=0.05)
        else:
            assert (EXAMPLES / row["file"]).read_bytes() == clip.read_bytes()


def test_examples_are_held_out_from_training(trained):
    held_out = set(trained.info["training_data"]["held_out_clips"])  # written by training.default_model
    assert all(row["clip"] in held_out for row in example_rows())


# -- Who speaks when ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_who_speaks_when_shows_two_rows_downloads_and_enrolls_a_voice_found(handlers, two_voices):
    path, _ = two_voices
    steps = []
    summary, figure, rows, files, menu, result = handlers.diarize(str(path), 0, progress=lambda *a, **k: steps.append(a))
    assert summary.startswith("**2 speakers** in 0:") and steps[-1][0] == pytest.approx(1.0)
    labels = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    assert len(labels) == 2 and set(labels) == {row[2] for row in rows}  # one timeline row per speaker
    assert [row[0] for row in rows] == sorted(row[0] for row in rows) and all(r[1] > r[0] for r in rows)
    rttm, table = (Path(f) for f in files)
    assert rttm.name == "two voices.rttm" and rttm.read_text().startswith("SPEAKER two_voices 1 ")
    assert table.read_text().splitlines()[0] == "start,end,speaker,score" and len(table.read_text().splitlines()) == len(rows) + 1
    found = result.speakers[0]
    message, enrolled, _ = handlers.enroll_found(result, found.name, "Guest")
    assert message.startswith("Enrolled **Guest** from ") and ["Guest"] == [row[0] for row in enrolled]
    with pytest.raises(gr.Error, match="find who speaks when first"):
        handlers.enroll_found(None, "unknown 1", "Guest 2")
    with pytest.raises(gr.Error, match="upload or record a conversation first"):
        handlers.diarize(None)


@pytest.mark.slow
def test_who_speaks_when_cuts_long_recordings_with_a_message(handlers, two_voices, monkeypatch):
    warnings = []
    monkeypatch.setattr(app, "MAX_DIARIZE_SECONDS", 15.0)
    monkeypatch.setattr(gr, "Warning", warnings.append)
    summary, *_ = handlers.diarize(str(two_voices[0]), 0, progress=lambda *a, **k: None)
    assert "in 0:15.0 of audio" in summary
    assert any("only its first 0:15.0 were diarized" in w for w in warnings)
