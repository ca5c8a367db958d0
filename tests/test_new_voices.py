"""bench.new_voices on stand-ins: a small untrained model whose 'known' speakers are two vcc2016 voices,
'unseen' speakers from emodb and fsdd. The figures mean nothing; the protocol and the report are tested."""

import pytest
import torch

from bench import new_voices
from speaker_app.checkpoint import Checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.model import ModelConfig, build_model

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


def test_the_report_has_every_model_source_and_open_set_figure(tiny, speech_dir):
    results = tiny / "RESULTS.md"
    new_voices.main(["--checkpoint", str(tiny / "tiny.pt"), "--audio-dir", str(speech_dir),
                     "--model", f"again={tiny / 'tiny.pt'}", "--no-resemblyzer", "--speakers", str(tiny / "dev.txt"),
                     "--speech", str(speech_dir), "--max-clips", "8", "--results", str(results)])
    text = results.read_text()
    assert "<!-- BEGIN new_voices -->" in text and "5 speakers, 40 clips, at most 8 per speaker" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ours (cosine)")]
    assert [row[1] for row in rows] == ["all", "emodb", "fsdd"]
    assert rows[0][2:4] == ["5", "15"]  # 5 speakers enrolled from 5 of their 8 clips, 3 tested each
    assert sum(line.startswith("| again |") for line in text.splitlines()) == 3  # the same model, named again
    assert "identification threshold 0.900: for the test" in text
    open_set = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()
                if line.startswith(("| unseen", "| known"))}
    assert "of 40 |" in open_set["unseen speakers' clips named as a known speaker (goal <= 10%)"]
    assert "of 8 |" in open_set["known speakers' held-out clips named correctly (goal >= 95%)"]
    assert ("Not speech: 1 kHz sine: no speech; white noise: no speech; constant (300, 40) tensor: no speech; "
            "random (300, 40) tensor: no speech.") in text


def test_resemblyzer_embeds_offline(speech_dir, tmp_path):
    pytest.importorskip("resemblyzer", reason="bench-only dependency (bench/requirements.txt)")
    clips = [new_voices.Clip("vcc2016/SF1", p.relative_to(speech_dir).as_posix())
             for p in sorted((speech_dir / "vcc2016" / "SF1").glob("*.flac"))[:2]]
    embeddings = new_voices.resemblyzer_embeddings(clips, speech_dir, tmp_path)
    assert embeddings.shape == (2, 256) and torch.allclose(embeddings.norm(dim=-1), torch.ones(2))
    assert len(list(tmp_path.glob("resemblyzer-*.pt"))) == 1  # cached for the next run
    assert torch.equal(new_voices.resemblyzer_embeddings(clips, speech_dir, tmp_path), embeddings)
