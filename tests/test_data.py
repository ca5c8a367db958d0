import collections
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speaker_app.features import FeatureConfig, log_mel
from speaker_app.scoring import equal_error_rate
from training.augment import AugmentConfig, Augmenter, frequency_warp
from training.config import TrainConfig, override
from training.data import (DataError, FeatureBank, Utterance, global_batches, load_features, read_labelled,
                           read_speakers, read_test, sampling_weights, split_utterances, stratified_split,
                           utterance_sources)
from training.prepare import find_clips, link_view, main as prepare_main, prepare, utterance_name
from tests.conftest import voiced


def course_folder(root, lengths=(30, 12, 50, 7, 25, 40)):
    """A tiny course-layout folder: two speakers, plus a non-utterance .pt as some releases have."""
    speakers = {"id10001": [], "id10002": []}
    for i, n in enumerate(lengths):
        name = f"uttr-{i:032x}.pt"
        torch.save(torch.full((n, 40), float(i)), root / name)
        speakers[f"id1000{1 + i % 2}"].append({"feature_path": name, "mel_len": n})
    (root / "mapping.json").write_text(json.dumps({"speaker2id": {"id10001": 0, "id10002": 1},
                                                   "id2speaker": {"0": "id10001", "1": "id10002"}}))
    (root / "metadata.json").write_text(json.dumps({"n_mels": 40, "speakers": speakers}))
    (root / "testdata.json").write_text(json.dumps({"n_mels": 40, "utterances": speakers["id10001"][:1]}))
    torch.save({"not": "an utterance", "module": torch.nn.Linear(2, 2).state_dict()}, root / "wav2mel.pt")
    return root


def test_course_layout_reads_only_listed_utterances(tmp_path):
    root = course_folder(tmp_path)
    speakers = read_speakers(root)
    utterances = read_labelled(root, speakers)
    assert speakers == ["id10001", "id10002"] and len(utterances) == 6
    assert all(u.path.startswith("uttr-") for u in utterances)
    assert read_test(root)[0].speaker == -1
    bank = FeatureBank(root, utterances, 40, progress=False)
    assert len(bank) == 6 and bank.frames.shape == (sum(u.length for u in utterances), 40)
    with pytest.raises(DataError, match="expected a"):
        load_features(root / "wav2mel.pt", 40)


def test_crops_are_slices_of_the_right_utterance(tmp_path):
    root = course_folder(tmp_path)
    utterances = read_labelled(root, read_speakers(root))
    bank = FeatureBank(root, utterances, 40, progress=False)
    features, lengths, labels = bank.crops(torch.arange(6), 20, torch.Generator().manual_seed(0))
    assert features.shape == (6, 20, 40)
    for i, u in enumerate(utterances):
        value = float(int(u.path[5:-3], 16))
        assert lengths[i] == min(20, u.length) and labels[i] == u.speaker
        assert (features[i, :lengths[i]] == value).all() and (features[i, lengths[i]:] == 0).all()


def test_split_is_stratified_and_stable():
    utterances = [Utterance(f"u{s}-{i}", s, 10) for s in range(5) for i in range(3 + 4 * s)]
    train, valid = split_utterances(utterances, 0.25, seed=3)
    assert split_utterances(list(reversed(utterances)), 0.25, seed=3) == (train, valid)
    assert split_utterances(utterances, 0.25, seed=4) != (train, valid)
    assert {u.speaker for u in valid} == set(range(5))  # every speaker validated
    assert {u.speaker for u in train} == set(range(5))  # and trained on
    assert not set(train) & set(valid) and len(train) + len(valid) == len(utterances)


def test_prepare_layout_from_an_audio_folder(tmp_path):
    audio = tmp_path / "audio"
    for speaker, f0 in [("corpus/anna", 220.0), ("corpus/bert", 110.0), ("carl", 150.0)]:
        (audio / speaker).mkdir(parents=True)
        for i in range(5):
            sf.write(audio / speaker / f"{i}.wav", voiced(0.6, f0=f0, seed=i), 16000)
    (audio / "carl" / "broken.wav").write_bytes(b"not audio at all")
    sf.write(audio / "carl" / "quiet.flac", np.zeros(8000, np.float32), 16000)
    sf.write(audio / "loose.wav", voiced(0.5), 16000)  # no speaker folder: ignored
    out = tmp_path / "data"
    summary = prepare(audio, out, test_fraction=0.2, seed=0, workers=1, progress=False)
    assert summary["speakers"] == 3 and summary["clips"] == 15 and summary["test"] == 3
    assert set(summary["skipped"]) == {"carl/broken.wav", "carl/quiet.flac"}
    speakers = read_speakers(out)
    assert speakers == ["carl", "corpus/anna", "corpus/bert"]
    train = read_labelled(out, speakers)
    test = read_test(out, speakers)
    assert len(train) == 12 and len(test) == 3 and {u.speaker for u in test} == {0, 1, 2}
    assert (out / utterance_name("carl/0.wav")).exists()
    for u in train + test:
        assert load_features(out / u.path, 40).shape == (u.length, 40)
    assert json.loads((out / "feature_config.json").read_text()) == FeatureConfig().to_dict()
    lines = (out / "test_labels.csv").read_text().splitlines()
    assert lines[0] == "Id,Category" and len(lines) == 4
    assert find_clips(audio, exclude=["corpus/*"]) == {"carl": [f"carl/{n}" for n in
                                                                ["0.wav", "1.wav", "2.wav", "3.wav", "4.wav", "broken.wav", "quiet.flac"]]}


def test_a_view_keeps_the_chosen_speakers_and_every_held_out_clip(tmp_path):
    """bench.many_speakers trains each row on a view of the prepared data, such as the speakers with 3 clips or more."""
    (tmp_path / "a").mkdir()
    for speaker, clips in [("src/one", 1), ("src/three", 3), ("src/tested", 2)]:
        (tmp_path / "a" / speaker).mkdir(parents=True)
        for i in range(clips):
            sf.write(tmp_path / "a" / speaker / f"{i}.wav", voiced(0.5, seed=i), 16000)
    (tmp_path / "test.txt").write_text("src/tested/0.wav\n")
    source = tmp_path / "data"
    prepare_main([str(tmp_path / "a"), str(source), "--test-list", str(tmp_path / "test.txt"), "--workers", "1",
                  "--quiet"])
    view = link_view(source, tmp_path / "view", lambda speaker, n_clips: n_clips >= 3)
    speakers = read_speakers(view)
    assert speakers == ["src/tested", "src/three"]  # "one" has too few clips; "tested" keeps its held-out clip
    assert sorted(speakers[u.speaker] for u in read_labelled(view, speakers)) == ["src/tested"] + ["src/three"] * 3
    assert [speakers[u.speaker] for u in read_test(view, speakers)] == ["src/tested"]
    assert all((view / u.path).resolve().parent == source.resolve() for u in read_labelled(view, speakers))


def test_prepare_several_folders_a_test_list_exclusions_and_speed_copies(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for root, speaker, f0 in [(first, "src/anna", 220.0), (first, "src/bert", 110.0), (second, "other/cleo", 150.0)]:
        (root / speaker).mkdir(parents=True)
        for i in range(3):
            sf.write(root / speaker / f"{i}.wav", voiced(1.0, f0=f0, seed=i), 16000)
    (tmp_path / "dev.txt").write_text("# held out\ntest src/bert\n")
    (tmp_path / "test.txt").write_text("src/anna/0.wav\nother/cleo/2.wav\n")
    out = tmp_path / "data"
    argv = [str(first), str(second), str(out), "--test-list", str(tmp_path / "test.txt"),
            "--exclude-from", str(tmp_path / "dev.txt"), "--speed", "0.9,1.1", "--workers", "1", "--quiet"]
    assert prepare_main(argv) == 0
    speakers = read_speakers(out)
    assert speakers == ["other/cleo", "other/cleo@0.9", "other/cleo@1.1", "src/anna", "src/anna@0.9", "src/anna@1.1"]
    test = read_test(out, speakers)
    assert sorted(speakers[u.speaker] for u in test) == ["other/cleo", "src/anna"]  # originals only
    train = read_labelled(out, speakers)
    by_name = {speakers[u.speaker]: [] for u in train}
    for u in train:
        by_name[speakers[u.speaker]].append(u.length)
    assert all(len(lengths) == 2 for lengths in by_name.values())  # 3 clips, 1 held out
    # Faster speech is shorter: about 1/0.9 and 1/1.1 of the original's frames.
    assert sum(by_name["src/anna@0.9"]) > sum(by_name["src/anna"]) > sum(by_name["src/anna@1.1"])
    with pytest.raises(SystemExit, match="both"):  # one speaker folder in two roots
        prepare([first, first], tmp_path / "twice", workers=1, progress=False)


def test_stratified_split_holds_out_a_share_of_every_group_and_is_seeded():
    groups = {"a": list(range(10)), "b": list(range(10, 13)), "c": [13]}
    kept, held = stratified_split(groups, 0.2, seed=0)
    assert sorted(kept + held) == list(range(14)) and stratified_split(groups, 0.2, seed=0) == (kept, held)
    assert len([x for x in held if x < 10]) == 2 and len([x for x in held if 10 <= x < 13]) == 1
    assert 13 in kept  # a group of one is never held out entirely


def test_augmenter_keeps_shapes_padding_and_is_seeded():
    augment = Augmenter(AugmentConfig(bandlimit_prob=1.0, noise_prob=1.0), FeatureConfig())
    x = torch.randn(4, 50, 40) - 3
    lengths = torch.tensor([50, 30, 10, 5])
    x[1, 30:] = 0
    x[2, 10:] = 0
    x[3, 5:] = 0
    a, a_lengths = augment(x, lengths, torch.Generator().manual_seed(0))
    b, b_lengths = augment(x, lengths, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a_lengths, lengths) and torch.equal(b_lengths, lengths)  # short_prob 0: lengths kept
    assert (a[1, 30:] == 0).all() and (a[3, 5:] == 0).all()
    # band-limited: filters wholly above 4 kHz are empty
    assert (a[:, :5, -5:] < -15).all()


def test_augmenter_shortens_crops_to_lengths_between_short_frames_and_their_own():
    config = AugmentConfig(bandlimit_prob=0, noise_prob=0, freq_masks=0, time_masks=0, short_prob=1.0, short_frames=30)
    x = torch.randn(400, 120, 40) - 3
    lengths = torch.tensor([120, 100, 31, 20] * 100)
    x[torch.arange(120)[None, :] >= lengths[:, None]] = 0
    y, short = Augmenter(config, FeatureConfig())(x, lengths, torch.Generator().manual_seed(0))
    assert (short <= lengths).all() and (short >= lengths.clamp(max=30)).all()
    assert (short[3::4] == 20).all()  # a crop already shorter than short_frames stays whole
    assert short[0::4].min() == 30 and short[0::4].max() > 110  # the whole range is drawn
    kept = torch.arange(120)[None, :] < short[:, None]
    assert (y[~kept] == 0).all()  # cut and padded with zeros,
    torch.testing.assert_close(y[kept], x[kept])  # otherwise untouched (but for rounding through the power domain)
    some = AugmentConfig(bandlimit_prob=0, noise_prob=0, freq_masks=0, time_masks=0, short_prob=0.3)
    _, short = Augmenter(some, FeatureConfig())(x, lengths, torch.Generator().manual_seed(0))
    assert 0.2 < (short < lengths)[0::4].float().mean() < 0.4


def only(**settings) -> AugmentConfig:
    """Only the named augmentations on."""
    return AugmentConfig(**{"bandlimit_prob": 0, "noise_prob": 0, "freq_masks": 0, "time_masks": 0, **settings})


def test_augmenter_reverberates_with_a_decaying_tail_and_never_lowers_power():
    x = torch.full((2, 100, 40), -20.0)
    x[:, 10] = 0.0  # one loud frame in silence
    lengths = torch.tensor([100, 60])
    x[1, 60:] = 0
    config = only(reverb_prob=1.0, rt60_s=(0.5, 0.5), drr_db=(0.0, 0.0))
    y, _ = Augmenter(config, FeatureConfig())(x, lengths, torch.Generator().manual_seed(0))
    assert (y[0] >= x[0] - 1e-4).all() and (y[1, :60] >= x[1, :60] - 1e-4).all()
    assert (y[1, 60:] == 0).all()  # padding stays zero
    tail = y[0, 11:60, 0]
    assert (tail[1:] < tail[:-1]).all() and (y[0, :10] < -19).all()  # decays after the sound, nothing before it
    # DRR 0 dB: the tail carries as much power as the direct frame; 0.5 s (50 frames) on it is 60 dB down
    assert abs(torch.logsumexp(y[0, 11:, 0], 0).item()) < 0.05
    assert abs((y[0, 60, 0] - y[0, 11, 0]).item() - math.log(10 ** (-6 * 49 / 50))) < 0.1
    never = Augmenter(only(reverb_prob=1.0, drr_db=(200.0, 200.0)), FeatureConfig())
    torch.testing.assert_close(never(x, lengths, torch.Generator().manual_seed(0))[0], x)


def test_augmenter_mixes_a_neighbouring_crop_at_the_drawn_snr():
    x = torch.randn(5, 50, 40) - 3
    lengths = torch.full((5,), 50)
    config = only(babble_prob=1.0, babble_snr_db=(10.0, 10.0))
    y, _ = Augmenter(config, FeatureConfig())(x, lengths, torch.Generator().manual_seed(0))
    for row, partner in ((0, 1), (1, 0), (2, 3), (3, 2)):
        expected = x[row].exp() + x[row].exp().mean() / x[partner].exp().mean() * 0.1 * x[partner].exp()
        torch.testing.assert_close(y[row], expected.log())
    torch.testing.assert_close(y[4], x[4])  # the odd one out has no neighbour: left alone


def test_default_recipe_names_the_shipped_model():
    from speaker_app.checkpoint import load_checkpoint
    from speaker_app.configs import from_dict
    from training.config import read_config_file

    root = Path(__file__).parents[1]
    recipe = from_dict(TrainConfig, read_config_file(root / "training" / "configs" / "default.json"))
    # Rerunning the recipe (training.default_model) builds the architecture of checkpoints/default.pt,
    # embedding in windows of the recipe's crops; the shipped model is an ensemble of such models (training.ensemble).
    windowed = dataclasses.replace(recipe.model, window_frames=recipe.segment_frames)
    shipped = load_checkpoint(root / "checkpoints" / "default.pt").model_config
    assert windowed == dataclasses.replace(shipped, members=1)


def test_config_overrides():
    config = override(TrainConfig(), ["model.d_model=96", "steps=10", "augment.snr_db=[1, 2]"])
    assert config.model.d_model == 96 and config.steps == 10 and config.augment.snr_db == (1, 2)
    with pytest.raises(ValueError, match="unknown"):
        override(TrainConfig(), ["model.width=3"])


def test_sampling_balances_speakers_by_a_power_of_their_clips():
    utterances = [Utterance(f"{i}", speaker, 10) for i, speaker in enumerate([0] * 16 + [1] * 4 + [2])]

    def speaker_shares(balance):
        weights = sampling_weights(utterances, balance)
        return torch.stack([weights[:16].sum(), weights[16:20].sum(), weights[20:].sum()]) / weights.sum()

    assert torch.allclose(speaker_shares(True), torch.full((3,), 1 / 3))
    assert torch.allclose(speaker_shares(False), torch.tensor([16, 4, 1]) / 21)
    assert torch.allclose(speaker_shares(0.5), torch.tensor([4, 2, 1]) / 7)  # the root of each speaker's clips
    with pytest.raises(ValueError, match="balance_speakers"):
        TrainConfig(balance_speakers=2)


def test_source_shares_set_each_named_sources_part_of_the_batch():
    speakers = ["big/a", "big/b", "small/c", "other/d"]
    utterances = [Utterance(f"{i}", speaker, 10) for i, speaker in enumerate([0] * 8 + [1] * 8 + [2] + [3] * 3)]
    weights = sampling_weights(utterances, 0.5, {"small": 0.5}, speakers)
    assert torch.isclose(weights[16] / weights.sum(), torch.tensor(0.5))
    # the rest keeps balance_speakers' proportions: big/a : big/b : other/d = 1 : 1 : sqrt(3)/sqrt(8)
    rest = torch.stack([weights[:8].sum(), weights[8:16].sum(), weights[17:].sum()])
    assert torch.allclose(rest / rest.sum(), torch.tensor([1, 1, (3 / 8) ** 0.5]) / (2 + (3 / 8) ** 0.5))
    assert torch.equal(sampling_weights(utterances, 0.5), sampling_weights(utterances, 0.5, {}, speakers))
    with pytest.raises(ValueError, match="no training speaker"):
        sampling_weights(utterances, 0.5, {"missing": 0.1}, speakers)
    for shares in ({"big": 0.8, "small": 0.3}, {"big": 0}, {"big": "half"}):
        with pytest.raises(ValueError, match="source_shares"):
            TrainConfig(source_shares=shares)
    assert override(TrainConfig(), ['source_shares={"small": 0.25}']).source_shares == {"small": 0.25}


def test_same_source_draws_that_share_of_each_batch_from_one_source():
    speakers = ["big/a", "big/b", "small/c", "other/d"]
    utterances = [Utterance(f"{i}", speaker, 10) for i, speaker in enumerate([0] * 8 + [1] * 8 + [2] + [3] * 3)]
    sources = utterance_sources(utterances, speakers)
    weights = sampling_weights(utterances, 1.0)
    plain = global_batches(weights, 16, seed=4)
    mixed = [global_batches(weights, 16, seed=4, rank=rank, world=2, sources=sources, same_source=0.5)
             for rank in (0, 1)]
    led = collections.Counter()
    for _ in range(400):
        halves = [next(stream)[0] for stream in mixed]
        counts = torch.bincount(sources[torch.cat(halves)], minlength=3)
        assert counts.max() >= 8  # half the global batch from one source...
        leader = int(counts.argmax())
        assert all((sources[half] == leader).any() for half in halves)  # ...spread over both ranks' slices
        led[leader] += 1
    # each source leads a batch in proportion to its weight: big 2, other 1, small 1 (speakers drawn equally)
    assert [led[i] / 400 for i in range(3)] == pytest.approx([0.5, 0.25, 0.25], abs=0.08)
    # no share, no change: the same batches as before the option existed
    same = global_batches(weights, 16, seed=4, sources=sources, same_source=0.0)
    assert all(torch.equal(next(plain)[0], next(same)[0]) for _ in range(5))
    with pytest.raises(ValueError, match="same_source"):
        TrainConfig(same_source=1.5)


def test_equal_error_rate():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    same = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])
    eer, threshold = equal_error_rate(scores, same)
    assert eer == pytest.approx(0.25) and 0.5 < threshold < 0.7
    assert equal_error_rate(scores, scores > 0.55)[0] == 0.0


@pytest.mark.parametrize("value, message", [(1e30, "holds values from 1e+30 to 1e+30: log-mel energies"),
                                            (float("nan"), "contains NaN or infinite values")])
def test_training_refuses_features_that_are_no_log_mels(tmp_path, value, message):
    """The same check as the app's (speaker_app.features.check_features), as a DataError naming the file."""
    torch.save(torch.full((30, 40), value), tmp_path / "uttr-x.pt")
    with pytest.raises(DataError, match=re.escape(f"uttr-x.pt {message}")):
        load_features(tmp_path / "uttr-x.pt", 40)


def test_init_copies_weights_and_the_classifier_rows_of_known_speakers_by_name():
    from speaker_app.checkpoint import Checkpoint
    from speaker_app.model import ModelConfig
    from speaker_app.registry import build_model
    from training.train import initialise_from

    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, ff_dim=32, emb_dim=8, frontend_channels=4)
    torch.manual_seed(0)
    source = build_model(config, 3)
    checkpoint = Checkpoint(config, FeatureConfig(), ["a", "b", "c"], source.state_dict())
    torch.manual_seed(1)
    model = build_model(config, 3)
    fresh = model.state_dict()["head.weight"].clone()
    assert initialise_from(model, checkpoint, ["c", "new", "a"]) == 2
    head, theirs = model.state_dict()["head.weight"], source.state_dict()["head.weight"]
    assert torch.equal(head[0], theirs[2]) and torch.equal(head[2], theirs[0]) and torch.equal(head[1], fresh[1])
    for name, value in source.state_dict().items():
        if name != "head.weight":
            assert torch.equal(model.state_dict()[name], value), name


def test_known_only_keeps_the_known_speakers_head_rows_by_name():
    from training.default_model import known_only
    from tests.helpers import tiny

    many = tiny(speakers=("x/1", "a", "y/2", "b"))
    model = known_only(many, ["b", "a"]).build_model()
    features = torch.randn(2, 120, 40)
    lengths = torch.tensor([120, 80])
    expected = many.build_model()(features, lengths)[:, [3, 1]]
    assert torch.allclose(model(features, lengths), expected, atol=1e-6)


def test_wise_ft_interpolates_the_weights_and_keeps_the_counters():
    from training.default_model import interpolated
    from tests.helpers import tiny

    before, after = tiny(seed=0), tiny(seed=1)
    after.state_dict["stepped"] = torch.tensor(7)  # an integer buffer, as BatchNorm's num_batches_tracked
    before.state_dict["stepped"] = torch.tensor(2)
    mixed = interpolated(before, after, 0.25)
    for name, value in mixed.state_dict.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * before.state_dict[name] + 0.25 * after.state_dict[name]), name
    assert mixed.state_dict["stepped"].item() == 7 and mixed.info["wise_ft"] == 0.25
    assert all(torch.equal(v, after.state_dict[k]) for k, v in interpolated(before, after, 1.0).state_dict.items())
    with pytest.raises(ValueError, match="between 0 and 1"):
        interpolated(before, after, 1.5)
    with pytest.raises(ValueError, match="same classes"):
        interpolated(tiny(speakers=("a", "b")), after, 0.5)


def test_default_model_refuses_a_share_of_fine_tuning_outside_0_to_1(tmp_path, capsys):
    from training.default_model import main

    with pytest.raises(SystemExit):
        main(["--corpus", str(tmp_path), "--work", str(tmp_path / "work"), "--wise-ft", "1.5"])
    assert "between 0 and 1" in capsys.readouterr().err and not (tmp_path / "work").exists()


def test_default_model_records_carry_no_absolute_path(tmp_path):
    from training.default_model import ROOT, portable

    corpus = tmp_path / "corpus"
    record = {"dev": f"{ROOT}/bench/dev_speakers.txt split calibration",
              "made": {"command": f"calibrate --audio-dir {corpus} --speakers {ROOT}/bench/dev_speakers.txt"}, "n": [3]}
    assert portable(record, corpus) == {"dev": "bench/dev_speakers.txt split calibration", "n": [3],
                                        "made": {"command": "calibrate --audio-dir CORPUS --speakers bench/dev_speakers.txt"}}


def test_default_model_recalibrates_a_trained_model_as_it_is(tmp_path, capsys):
    from training.default_model import main

    with pytest.raises(SystemExit):
        main(["--corpus", str(tmp_path), "--work", str(tmp_path / "work"), "--recalibrate", "x.pt", "--seed", "1"])
    assert "as it is" in capsys.readouterr().err and not (tmp_path / "work").exists()


def test_the_default_model_embeds_in_windows_of_its_training_crop_and_says_so_in_its_fingerprint():
    from speaker_app.recognizer import fingerprint
    from training.default_model import windowed
    from tests.helpers import tiny

    model = tiny()
    framed = windowed(model, 120)
    assert framed.model_config.window_frames == 120 and model.model_config.window_frames == 0
    assert framed.build_model().config.window_frames == 120
    assert all(torch.equal(framed.state_dict[k], v) for k, v in model.state_dict.items())
    assert fingerprint(framed) != fingerprint(model) == fingerprint(windowed(model, 0))


def test_frequency_warp_moves_a_tone_to_the_scaled_frequency():
    config = FeatureConfig()
    t = np.arange(config.sample_rate) / config.sample_rate

    def tone(hz):
        return log_mel(np.sin(2 * np.pi * hz * t), config).mean(0)

    torch.testing.assert_close(frequency_warp(config, 1.0), torch.eye(config.n_mels))
    for factor in (0.9, 1.1):
        warped = tone(1500) @ frequency_warp(config, factor).T
        assert warped.argmax() == tone(1500 * factor).argmax() != tone(1500).argmax()


def test_speaker_augmentation_labels_each_warp_as_a_new_speaker():
    x = torch.randn(400, 30, 40) - 3
    labels = torch.arange(400) % 7
    config = only(warp_prob=0.5, warp_factors=(0.9, 1.1))
    augment = Augmenter(config, FeatureConfig(), n_speakers=7)
    y, new = augment.new_speakers(x, labels, torch.Generator().manual_seed(0))
    assert (new % 7 == labels).all() and set((new // 7).tolist()) == {0, 1, 2}  # itself, or factor j's copy
    assert 0.4 < (new >= 7).float().mean() < 0.6
    same = new < 7
    assert torch.equal(y[same], x[same])
    for block, factor in ((1, 0.9), (2, 1.1)):
        rows = new // 7 == block
        torch.testing.assert_close(y[rows], x[rows] @ frequency_warp(FeatureConfig(), factor).T)
    off = Augmenter(only(), FeatureConfig())
    generator = torch.Generator().manual_seed(0)
    assert off.new_speakers(x, labels, generator)[1] is labels
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())  # nothing drawn
    with pytest.raises(ValueError, match="number of speakers"):
        Augmenter(config, FeatureConfig())
