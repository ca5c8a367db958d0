"""training.new_voices (the protocol bench.new_voices reports) on stand-ins: a small untrained model whose
'known' speakers are two vcc2016 voices, 'unseen' speakers from emodb and fsdd. The figures mean nothing;
what is measured, on which clips, is tested."""

import pytest
import torch

from speaker_app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.model import ModelConfig
from speaker_app.recognizer import Recognizer
from speaker_app.registry import build_model
from training import new_voices
from training.dev_clips import audio_clips, read_speaker_list

KNOWN = ["vcc2016/SF1", "vcc2016/SM1"]
UNSEEN = ["emodb/03", "emodb/08", "fsdd/george", "fsdd/jackson", "fsdd/lucas"]


@pytest.fixture(scope="module")
def tiny(speech_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("new-voices")
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_heads=2, n_layers=1, ff_dim=32, emb_dim=8)
    held_out = [f"{s}/{p.name}" for s in KNOWN for p in sorted((speech_dir / s).glob("*.flac"))[:4]]
    checkpoint = Checkpoint(config, FeatureConfig(), KNOWN, build_model(config, 2).state_dict(),
                            info={"training_data": {"held_out_clips": held_out},
                                  "calibration": {"score": {"kind": "cosine"},
                                                  "identification": {"threshold": 0.9, "method": "for the test"},
                                                  "verification": {"threshold": 0.8, "method": "for the test"}}})
    save_checkpoint(checkpoint, folder / "tiny.pt")
    (folder / "dev.txt").write_text("".join(f"test {s}\n" for s in UNSEEN) + "calibration emodb/09\n")
    return folder


def test_every_model_source_and_open_set_figure_is_measured(tiny, speech_dir):
    speakers = read_speaker_list(tiny / "dev.txt", "test")
    unseen = [new_voices.Clip(*row) for row in audio_clips(speech_dir, speakers, max_clips=8)]
    checkpoint, again = load_checkpoint(tiny / "tiny.pt"), load_checkpoint(tiny / "tiny.pt")
    measured = new_voices.measure(checkpoint, unseen, speech_dir, speech_dir, {"again": again})
    assert measured.counts == {"speakers": 5, "clips": 40, "skipped": 0, "known": 8}  # at most 8 clips per speaker
    ours = measured.tables["ours (cosine)"]
    assert list(ours) == ["all", "emodb", "fsdd"]
    assert (ours["all"]["enroll_speakers"], ours["all"]["enroll_test_clips"]) == (5, 15)  # 5 of 8 clips enrolled
    assert list(measured.tables["again"]) == ["all", "emodb", "fsdd"]  # the same model, named again
    decisions = Recognizer(checkpoint).decisions  # the open set is at these, the checkpoint's own
    assert (decisions.identification.threshold, decisions.identification.method) == (0.9, "for the test")
    assert measured.open_set["unseen_named"]["all"][1] == 40
    assert measured.open_set["known_correct"]["all"][1] == 8
    assert measured.open_set["non_speech"] == {"1 kHz sine": "no speech", "white noise": "no speech",
                                               "constant (300, 40) tensor": "no speech",
                                               "random (300, 40) tensor": "no speech"}


def test_resemblyzer_embeds_offline(speech_dir, tmp_path):
    pytest.importorskip("resemblyzer", reason="bench-only dependency (bench/requirements.txt)")
    clips = [new_voices.Clip("vcc2016/SF1", p.relative_to(speech_dir).as_posix())
             for p in sorted((speech_dir / "vcc2016" / "SF1").glob("*.flac"))[:2]]
    embeddings = new_voices.resemblyzer_embeddings(clips, speech_dir, tmp_path)
    assert embeddings.shape == (2, 256) and torch.allclose(embeddings.norm(dim=-1), torch.ones(2))
    assert len(list(tmp_path.glob("resemblyzer-*.pt"))) == 1  # cached for the next run
    assert torch.equal(new_voices.resemblyzer_embeddings(clips, speech_dir, tmp_path), embeddings)


def test_paired_top1_counts_the_clips_only_one_model_names_and_draws_speakers():
    torch.manual_seed(0)
    speakers = [f"src/{i}" for i in range(6)]
    clips = [new_voices.Clip(s, f"{s}/{j:02d}.wav") for s in speakers for j in range(10)]
    centres = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    ours = torch.nn.functional.normalize(centres.repeat_interleave(10, 0) + 0.01 * torch.randn(60, 16), dim=-1)
    same = new_voices.paired_top1(clips, ours, ours.clone())
    assert (same["difference"], same["interval"], same["ours_only"], same["peer_only"]) == (0.0, (0.0, 0.0), 0, 0)
    assert (same["clips"], same["speakers"]) == (30, 6)  # 5 of each speaker's 10 clips enroll it

    peer = ours.clone()
    peer[[5, 6, 7, 15]] = ours[[25, 26, 27, 35]]  # four test clips of speakers 0 and 1 look like speakers 2 and 3
    worse = new_voices.paired_top1(clips, ours, peer)
    assert (worse["ours_only"], worse["peer_only"]) == (4, 0)
    assert worse["difference"] == pytest.approx(4 / 30)
    low, high = worse["interval"]
    assert 0 <= low < 4 / 30 < high  # some draws leave speakers 0 and 1 out, others take them twice
    assert new_voices.paired_top1(clips, peer, ours)["difference"] == pytest.approx(-4 / 30)
