"""Issue 14, case by case: what an adversarial but realistic user did to the running app. Each test
is named for its numbered case: poisoned voiceprints (1), decompression bombs (2), the voice of a
deleted speaker (3), silent replacement (4), look-alike names (5), a damaged gallery (6), /forget
from any client (7), messages and leaked paths (8), visitors' own galleries (9), load (10)."""

import collections
import io
import json
import math
import os
import pickle
import stat
import threading
import time
import urllib.request
import zipfile

import gradio as gr
import numpy as np
import pytest
import torch
from gradio.route_utils import delete_files_created_by_app
from gradio_client import handle_file

import app
from speaker_app.checkpoint import save_checkpoint
from speaker_app.recognizer import InputError, Recognizer, fingerprint
from tests.conftest import speechlike_features
from tests.helpers import (ROOT, client, enroll_once, five_second_clip, peak_growth_mb, run_together, serving_tiny,
                           tiny)


def clip(seed: int, frames: int = 150) -> torch.Tensor:
    """(T, 40) log-mel features of speech-like audio (noise is refused as no speech): a different 'voice' per seed."""
    return speechlike_features(frames, seed)[:frames]


def clip_file(folder, seed: int) -> str:
    path = folder / f"clip-{seed}.pt"
    torch.save(clip(seed), path)
    return str(path)


@pytest.fixture
def recognizer(tmp_path):
    return Recognizer(tiny(), tmp_path / "gallery.json")


def stored_speakers(recognizer) -> dict:
    return json.loads(recognizer.gallery.path.read_text())["speakers"]


# -- 1. One enrollment broke identification for everyone, persistently ---------------------------
@pytest.mark.parametrize("value", [1e30, 1e20, -1e30])
def test_1_a_poisoned_feature_file_is_refused_and_identification_goes_on(recognizer, tmp_path, value):
    handlers = app.Handlers(recognizer)
    recognizer.enroll("ann", [clip(1)])
    poison = tmp_path / "p.pt"
    torch.save(torch.full((300, 40), value), poison)
    with pytest.raises(gr.Error, match=r"p.pt holds values from .*: log-mel energies"):
        handlers.enroll("poison", [str(poison)])
    with pytest.raises(gr.Error, match=r"p.pt holds values from"):
        handlers.identify(None, str(poison), 3)
    assert recognizer.gallery.names() == ["ann"]
    assert all(math.isfinite(v) for entry in stored_speakers(recognizer).values() for v in entry["embedding"])
    result = recognizer.identify(clip(1), top_k=4)
    assert result.best is not None and result.best.name == "ann"
    assert all(math.isfinite(m.probability) and math.isfinite(m.score) for m in result.matches)
    label, verdict, features_plot, attention_plot, _ = handlers.identify(None, clip_file(tmp_path, 1), 3)
    assert "### ann\n" in verdict and features_plot is not None and attention_plot is not None


def test_1_a_poisoned_voiceprint_already_in_the_gallery_is_set_aside(recognizer):
    recognizer.enroll("ann", [clip(1)])
    data = json.loads(recognizer.gallery.path.read_text())
    data["speakers"]["poison"] = {**data["speakers"]["ann"], "embedding": [float("nan")] * 16}
    recognizer.gallery.path.write_text(json.dumps(data))  # what the old app wrote
    again = Recognizer(recognizer.checkpoint, recognizer.gallery.path)  # a restart
    assert again.gallery.names() == ["ann"] and any("'poison' was set aside" in n for n in again.gallery.notices)
    result = again.identify(clip(1), top_k=4)
    assert result.best.name == "ann" and all(math.isfinite(m.probability) for m in result.matches)


UNIT = torch.nn.functional.normalize(torch.ones(16), dim=0)  # a voiceprint the tiny model could give


@pytest.mark.parametrize("embedding, problem", [
    (torch.full((16,), float("nan")), "holds NaN or infinite values"),
    (torch.cat([torch.tensor([float("inf")]), UNIT[1:]]), "holds NaN or infinite values"),
    (UNIT[:10] / UNIT[:10].norm(), r"shape \(10,\); this model's have \(16,\)"),
    (UNIT[None], r"shape \(1, 16\)"),
    (2 * UNIT, "norm 2, not 1"),
])
def test_1_the_gallery_refuses_to_write_a_voiceprint_it_could_not_score(recognizer, embedding, problem):
    recognizer.enroll("ann", [clip(1)])
    before = recognizer.gallery.path.read_text()
    with pytest.raises(ValueError, match=problem):
        recognizer.gallery.add("poison", embedding, 1)
    with pytest.raises(ValueError, match=problem):  # nor as one of its clips
        recognizer.gallery.add("poison", UNIT, 2, clip_embeddings=[UNIT, embedding])
    with pytest.raises(ValueError, match="2 clips, but 1 clip embeddings"):
        recognizer.gallery.add("poison", UNIT, 2, clip_embeddings=UNIT[None])
    assert recognizer.gallery.names() == ["ann"] and recognizer.gallery.path.read_text() == before


def test_1_a_poisoned_clip_embedding_in_the_gallery_is_set_aside(recognizer):
    recognizer.enroll("ann", [clip(1), clip(2)])
    data = json.loads(recognizer.gallery.path.read_text())
    assert len(data["speakers"]["ann"]["clip_embeddings"]) == 2
    data["speakers"]["poison"] = {**data["speakers"]["ann"], "clip_embeddings": [[float("nan")] * 16]}
    recognizer.gallery.path.write_text(json.dumps(data))
    again = Recognizer(recognizer.checkpoint, recognizer.gallery.path)
    assert again.gallery.names() == ["ann"] and any("'poison' was set aside" in n for n in again.gallery.notices)


@pytest.mark.parametrize("broken", ["every weight", "the margin head"])  # NaN embeddings and logits, or logits only
def test_1_a_model_that_outputs_non_finite_numbers_gets_a_message_not_an_answer(recognizer, broken):
    recognizer.enroll("ann", [clip(1)])
    with torch.no_grad():
        for parameter in recognizer.model.parameters() if broken == "every weight" else [recognizer.model.head.weight]:
            parameter.fill_(float("nan"))
    for request in (lambda: recognizer.identify(clip(1)), lambda: recognizer.verify(clip(1), clip(2)),
                    lambda: recognizer.enroll("bob", [clip(2)])):
        with pytest.raises(InputError, match="the model cannot score this input: its output is not finite"):
            request()
    assert recognizer.gallery.names() == ["ann"]


# -- 2. A 973 KB upload held the model for 259 s ------------------------------------------------------
STORAGE = object()


class _Tensor:
    """Pickles as torch.save pickles a float32 tensor of `shape` (torch._utils._rebuild_tensor_v2)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __reduce__(self):
        stride = tuple(math.prod(self.shape[i + 1:]) for i in range(len(self.shape)))
        return torch._utils._rebuild_tensor_v2, (STORAGE, 0, self.shape, stride, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def __init__(self, file, numel):
        super().__init__(file, protocol=2)
        self.numel = numel

    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", self.numel) if obj is STORAGE else None


def tensor_file(path, shape, chunks, compress: bool = False):
    """A .pt file laid out as torch.save writes it, its data entry made of `chunks`, deflated if asked."""
    structure = io.BytesIO()
    _Pickler(structure, math.prod(shape)).dump(_Tensor(shape))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", structure.getvalue())
        archive.writestr("archive/byteorder", "little")
        with archive.open("archive/data/0", "w", force_zip64=True) as handle:
            for piece in chunks:
                handle.write(piece)
        archive.writestr("archive/version", "3\n")
    return path


def test_the_crafted_files_are_what_torch_save_writes(tmp_path):
    """The control: tensor_file makes files torch.load reads as the tensor they declare."""
    features = clip(0)
    path = tensor_file(tmp_path / "x.pt", features.shape, [features.numpy().tobytes()], compress=True)
    assert torch.equal(torch.load(path, weights_only=True), features)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """About 1 MB on disk; a (6,250,000, 40) float tensor, 1 GB, once inflated."""
    size, block = 6_250_000 * 40 * 4, 1 << 24
    chunks = (bytes(min(block, size - start)) for start in range(0, size, block))
    path = tensor_file(tmp_path_factory.mktemp("bomb") / "bomb.pt", (6_250_000, 40), chunks, compress=True)
    assert path.stat().st_size < 1_100_000
    return path


def test_2_a_decompression_bomb_is_refused_at_once_without_memory(recognizer, bomb):
    handlers = app.Handlers(recognizer)
    started = time.perf_counter()
    growth = peak_growth_mb(lambda: pytest.raises(gr.Error, handlers.identify, None, str(bomb), 3))
    assert time.perf_counter() - started < 2 and growth < 100, f"{time.perf_counter() - started:.1f} s, {growth:.0f} MB"
    with pytest.raises(InputError, match=r"bomb.pt: it would unpack to 1,000.0 MB, over the .* allowed \(feature "
                                         r"files hold at most 10 minutes"):
        recognizer.enroll("bomb", [bomb])
    with pytest.raises(InputError, match="a storage declares more data than the file holds"):
        recognizer.features(tensor_file(bomb.parent / "light.pt", (6_250_000, 40), [bytes(4 * 40)]))


@pytest.mark.parametrize("kind", ["pt", "npy", "view"])
def test_2_feature_files_past_ten_minutes_are_refused(recognizer, tmp_path, kind):
    path = tmp_path / f"long.{'npy' if kind == 'npy' else 'pt'}"
    if kind == "npy":
        np.save(path, np.zeros((60_001, 40), np.float32) - 5)
    elif kind == "view":
        torch.save(torch.full((1, 40), -5.0).expand(6_250_000, 40), path)  # 160 bytes of data, 62,500 s declared
    else:
        torch.save(torch.zeros(60_001, 40) - 5, path)
    with pytest.raises(InputError, match=r"over the 2,400,000 allowed \(feature files hold at most 10 minutes: "
                                         r"60,000 frames of 40 values\)"):
        recognizer.identify(path)
    with pytest.raises(InputError, match="holds 60,001 frames, over the 60,000 allowed"):
        recognizer.identify(torch.zeros(60_001, 40) - 5)


# -- 3. Deleting a speaker did not delete their voice ---------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    """`python app.py` serving a tiny untrained model from its own folder: (process, url, folder, 5 s clip)."""
    folder = tmp_path_factory.mktemp("server")
    (folder / "clips").mkdir()
    with serving_tiny(folder) as (process, url):
        yield process, url, folder, five_second_clip(folder / "clips")


def test_3_a_deleted_speaker_leaves_no_audio_on_the_server(tiny_server):
    _, url, folder, wav = tiny_server
    user = client(url)
    enroll_once(user, "Actor One", wav)
    voice = wav.read_bytes()
    uploads = folder / "gradio-uploads"
    assert uploads.is_dir()
    assert [p for p in uploads.rglob("*") if p.is_file() and p.read_bytes() == voice] == []  # gone once embedded
    message, *_ = user.predict("Actor One", api_name="/forget")
    assert message == "Deleted **Actor One**."
    gallery = next((folder / "gallery").glob("*.json"))
    for path in (gallery, gallery.with_name(gallery.name + ".prev")):  # the previous copy forgets them too
        assert "Actor One" not in path.read_text(), path.name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name  # readable by the app's user only


def test_3_a_deletion_leaves_no_previous_copy_of_the_voiceprint(recognizer):
    recognizer.enroll("ann", [clip(1)])
    recognizer.enroll("bob", [clip(2)])
    assert recognizer.forget("bob") == "bob"
    path = recognizer.gallery.path
    previous = path.with_name("gallery.json.prev")
    assert json.loads(previous.read_text())["speakers"].keys() == {"ann"}
    path.write_text("garbage")  # and a damaged gallery still gives way to its previous copy
    assert Recognizer(recognizer.checkpoint, path).gallery.names() == ["ann"]


def test_3_enrollment_uploads_go_once_embedded_and_identify_uploads_stay_for_another_run(recognizer, tmp_path):
    handlers = app.Handlers(recognizer)
    enrolled, identified, example = (clip_file(tmp_path, seed) for seed in (1, 2, 3))
    handlers.uploads = {enrolled, identified}  # what Gradio records as visitors' uploads
    handlers.enroll("ann", [enrolled, example])
    assert not os.path.exists(enrolled) and os.path.exists(example)  # a file nobody uploaded is never touched
    for _ in range(2):  # pressing Identify again sends the same server file
        handlers.answer(None, identified, 3)
    assert os.path.exists(identified)


def test_3_the_upload_cache_is_cleaned_and_the_examples_survive_it(recognizer):
    demo = app.build_demo(recognizer, "tiny.pt")
    assert demo.delete_cache == app.DELETE_CACHE and app.DELETE_CACHE[1] <= 3600
    examples = set().union(*(block.temp_files for block in demo.blocks.values()  # the examples' cached copies
                             if isinstance(block, gr.components.Component)))
    assert len(examples) >= 4
    delete_files_created_by_app(demo, None)  # what the cleanup does, to every file regardless of age
    assert all(os.path.isfile(path) for path in examples)


# -- 4. Enrolling an existing name silently replaced that voiceprint -------------------------------
def test_4_an_enrolled_name_is_replaced_only_when_asked(recognizer, tmp_path):
    recognizer.enroll("Twin", [clip(1)])
    first = stored_speakers(recognizer)["Twin"]["embedding"]
    with pytest.raises(InputError, match="'Twin' is already enrolled; to replace that voiceprint"):
        recognizer.enroll("twin", [clip(2)])
    assert stored_speakers(recognizer)["Twin"]["embedding"] == first
    handlers = app.Handlers(recognizer)
    with pytest.raises(gr.Error, match="already enrolled"):
        handlers.enroll("Twin", [clip_file(tmp_path, 2)])
    message, rows, _ = handlers.enroll("Twin", [clip_file(tmp_path, 2)], True)
    assert message.startswith("Replaced **Twin**") and [row[0] for row in rows] == ["Twin"]
    assert stored_speakers(recognizer)["Twin"]["embedding"] != first


def test_4_two_enrollments_of_one_name_at_once_cannot_both_win(recognizer, monkeypatch):
    both_checked = threading.Barrier(2)
    speech_embedding, write = recognizer.speech_embedding, recognizer.gallery._write

    def embed_together(source, what):  # both requests have passed the early name check before either stores
        embedding = speech_embedding(source, what)
        both_checked.wait(timeout=30)
        return embedding

    def slow_write(*args, **kwargs):  # a slow disk: without the gallery's lock the other request checks meanwhile
        time.sleep(0.5)
        return write(*args, **kwargs)

    monkeypatch.setattr(recognizer, "speech_embedding", embed_together)
    monkeypatch.setattr(recognizer.gallery, "_write", slow_write)
    results = run_together([lambda: recognizer.enroll("Twin", [clip(1)]), lambda: recognizer.enroll("Twin", [clip(2)])])
    assert sorted(type(r).__name__ for r in results) == ["InputError", "str"], results
    winner = results.index("Twin") + 1
    assert "already enrolled" in str(results[2 - winner])
    stored = torch.tensor(stored_speakers(recognizer)["Twin"]["embedding"])
    assert torch.allclose(stored, recognizer.embed(clip(winner)), atol=1e-5)  # the winner's voiceprint, intact


# -- 5. Look-alike names were separate entries; `$$x^2$$` was rendered --------------------------------
@pytest.mark.parametrize("name", ["\u200b", "Ann\u200b", "\u202enosilla", "A\u2066nn\u2069", "\ufeffAnn"])
def test_5_invisible_and_direction_characters_are_refused(recognizer, name):
    with pytest.raises(InputError, match="invisible formatting characters"):
        recognizer.enroll(name, [clip(1)])
    assert recognizer.gallery.names() == []


def test_5_names_that_look_alike_are_one_name(recognizer):
    assert recognizer.enroll("Ren\u00e9e Lee", [clip(1)]) == "Renée Lee"  # composed é
    for other in ["Rene\u0301e Lee", "renée lee", "  RENÉE   LEE ", "RenéeLee", "\uff32enée Lee"]:
        # decomposed é, case, spacing, no space, a fullwidth R (NFKC makes it R)
        with pytest.raises(InputError, match="'Renée Lee' is already enrolled"):
            recognizer.enroll(other, [clip(2)])
    assert recognizer.gallery.names() == ["Renée Lee"]
    assert recognizer.forget("RENE\u0301E LEE") == "Renée Lee" and recognizer.gallery.names() == []


def test_5_names_are_shown_as_plain_text_latex_included(recognizer, tmp_path):
    handlers = app.Handlers(recognizer)
    message, rows, _ = handlers.enroll("$$x^2$$", [clip_file(tmp_path, 1)])
    assert "**\\$\\$x^2\\$\\$**" in message and rows[0][0] == "$$x^2$$"
    _, verdict, *_ = handlers.identify(None, clip_file(tmp_path, 1), 3)
    assert "### \\$\\$x^2\\$\\$\n" in verdict
    demo = app.build_demo(recognizer, "tiny.pt")
    shown = {block.elem_id: block for block in demo.blocks.values() if isinstance(block, gr.Markdown)}
    assert shown["verdict"].latex_delimiters == [] and shown["enroll-message"].latex_delimiters == []


# -- 6. A damaged gallery stopped the app, and there was no previous copy ---------------------------
DAMAGE = {"truncated": lambda text: text[: len(text) // 2], "garbage": lambda text: "\x00garbage",
          "empty list": lambda text: "[]", "null": lambda text: "null", "no table": lambda text: '{"model": 1}'}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_6_a_damaged_gallery_gives_way_to_its_previous_copy(tmp_path, damage):
    checkpoint, path = tiny(), tmp_path / "gallery.json"
    first = Recognizer(checkpoint, path)
    first.enroll("ann", [clip(1)])
    first.enroll("bob", [clip(2)])  # the previous copy holds ann only
    damaged = DAMAGE[damage](path.read_text())
    path.write_text(damaged)
    again = Recognizer(checkpoint, path)
    assert again.gallery.names() == ["ann"]
    (notice,) = again.gallery.notices
    assert "started from its previous copy gallery.json.prev (1 speakers)" in notice
    assert path.with_name("gallery.json.damaged").read_text() == damaged  # kept for a look, not lost
    assert again.identify(clip(1)).best.name == "ann"
    again.enroll("cid", [clip(3)])  # and it is written again
    assert Recognizer(checkpoint, path).gallery.names() == ["ann", "cid"]


def test_6_without_a_previous_copy_the_app_starts_empty_and_says_so(tmp_path, capsys, monkeypatch):
    save_checkpoint(tiny(), tmp_path / "tiny.pt")
    folder = tmp_path / "gallery"
    folder.mkdir()
    (folder / f"{fingerprint(tiny())}.json").write_text("null")
    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(self))
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    assert app.main(["--checkpoint", str(tmp_path / "tiny.pt"), "--gallery", str(folder)]) == 0 and launched
    err = capsys.readouterr().err
    assert "warning: the gallery" in err and "starting with no enrolled speakers" in err
    assert (folder / f"{fingerprint(tiny())}.json.damaged").read_text() == "null"


def test_6_entries_that_cannot_be_scored_are_named_and_set_aside(recognizer):
    recognizer.enroll("ann", [clip(1)])
    data = json.loads(recognizer.gallery.path.read_text())
    good = data["speakers"]["ann"]
    data["speakers"].update({"short": {**good, "embedding": [0.3] * 10}, "empty": {**good, "embedding": []},
                             "words": {**good, "embedding": ["a"] * 16}, "bad\u200bname": good, "ANN": good})
    recognizer.gallery.path.write_text(json.dumps(data))
    again = Recognizer(recognizer.checkpoint, recognizer.gallery.path)
    assert again.gallery.names() == ["ann"]
    for name in ["short", "empty", "words", "bad\u200bname", "ANN"]:
        assert any(f"{name!r} was set aside" in notice for notice in again.gallery.notices), name
    aside = json.loads(recognizer.gallery.path.with_name("gallery.json.quarantine.json").read_text())
    assert sorted(aside) == sorted(["short", "empty", "words", "bad\u200bname", "ANN"])
    assert "this model's have (16,)" in aside["short"]["problem"]
    assert again.identify(clip(1)).best.name == "ann"


# -- 7. /forget from a fresh API client ------------------------------------------------------------
def test_7_forget_takes_a_name_from_any_client_and_lists_no_others(tiny_server):
    _, url, _, wav = tiny_server
    enroll_once(client(url), "Sine", wav)
    enroll_once(client(url), "Other", wav)
    fresh = client(url)
    message, *_ = fresh.predict("sine", api_name="/forget")
    assert message == "Deleted **Sine**."
    message, *_ = fresh.predict("Nobody", api_name="/forget")
    assert message == "**Nobody** is not enrolled."
    message, *_ = fresh.predict("Other", api_name="/forget")
    assert message == "Deleted **Other**."


# -- 8. Messages and leaks ---------------------------------------------------------------------------
class System:
    """Unpickling this would run a shell command (creating `marker`)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_8_random_bytes_and_pickled_programs_get_their_own_message(recognizer, tmp_path):
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(InputError) as caught:
        recognizer.identify(tmp_path / "random.pt")
    assert str(caught.value) == "cannot read random.pt: it is truncated or damaged"
    marker = tmp_path / "ran"
    (tmp_path / "system.pt").write_bytes(pickle.dumps(System(marker)))  # pickled, not torch.save'd
    torch.save({"x": System(marker)}, tmp_path / "system-zip.pt")
    for name in ("system.pt", "system-zip.pt"):
        with pytest.raises(InputError, match=f"cannot read {name}: it holds Python objects.*could run code"):
            recognizer.identify(tmp_path / name)
    assert not marker.exists()


def test_8_no_absolute_server_path_in_the_page_or_upload_replies(tiny_server):
    _, url, folder, wav = tiny_server
    with urllib.request.urlopen(url + "config") as response:
        config = response.read().decode()
    for path in (str(ROOT), str(folder), "/tmp/"):
        assert path not in config, path
    assert "Checkpoint: `tiny.pt`" in config  # the Model tab names the file, not its folder
    boundary = "speaker-app-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"clip.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + wav.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request) as response:
        (uploaded,) = json.loads(response.read())
    assert not os.path.isabs(uploaded) and uploaded.startswith("gradio-uploads/"), uploaded


# -- 9. Every visitor of a public Space shared one gallery -------------------------------------------
def test_9_visitors_galleries_are_their_own(tmp_path):
    handlers = app.Handlers(Recognizer(tiny()), per_visitor=True)
    ann_clip = clip_file(tmp_path, 1)
    message, rows, menu, ann = handlers.enroll("Ann", [ann_clip], False, None)
    assert message.startswith("Enrolled **Ann**") and [row[0] for row in rows] == ["Ann"]
    assert handlers.gallery(None)[0] == [] and handlers.gallery(ann)[0][0][0] == "Ann"
    message, rows, _, bob = handlers.forget("Ann", None)  # another visitor
    assert message == "**Ann** is not enrolled." and rows == [] and ann.names() == ["Ann"]
    label, *_ = handlers.identify(None, ann_clip, 10, 1, 0, None)
    assert "Ann (enrolled)" not in label
    label, *_ = handlers.identify(None, ann_clip, 10, 1, 0, ann)
    assert "Ann (enrolled)" in label
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip-1.pt"]  # nothing written to disk


def test_9_per_visitor_galleries_are_the_default_on_spaces(tmp_path, monkeypatch):
    save_checkpoint(tiny(), tmp_path / "tiny.pt")
    built = []
    monkeypatch.setattr(app, "build_demo", lambda recognizer, checkpoint, per_visitor: built.append(
        (recognizer.gallery, per_visitor)) or gr.Blocks())
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: None)
    monkeypatch.chdir(tmp_path)
    for space, flag, expected in [("user/space", [], True), (None, [], False),
                                  (None, ["--galleries", "per-visitor"], True),
                                  ("user/space", ["--galleries", "shared"], False)]:
        if space:
            monkeypatch.setenv("SPACE_ID", space)
        else:
            monkeypatch.delenv("SPACE_ID", raising=False)
        assert app.main(["--checkpoint", str(tmp_path / "tiny.pt"), "--gallery", str(tmp_path / "g"), *flag]) == 0
        gallery, per_visitor = built.pop()
        assert per_visitor == expected and (gallery is None) == expected


# -- 10. Load: one model queue at about 0.3 s a request -------------------------------------------------
def test_10_concurrent_requests_run_together_with_the_same_answers(recognizer, monkeypatch):
    clips = [clip(seed) for seed in range(8)]
    alone = [recognizer.identify(features, top_k=3) for features in clips]
    sizes, forward = [], recognizer.model.forward_intermediates

    def slow_forward(features, lengths):  # a busy model: requests pile up behind it
        sizes.append(len(lengths))
        time.sleep(0.2)
        return forward(features, lengths)

    monkeypatch.setattr(recognizer.model, "forward_intermediates", slow_forward)
    together = run_together([lambda f=features: recognizer.identify_explained(f, top_k=3) for features in clips])
    assert sum(sizes) == 8 and len(sizes) < 8 and max(sizes) > 1, sizes
    for one, (batched, explanation) in zip(alone, together):
        assert [m.name for m in batched.matches] == [m.name for m in one.matches]
        assert np.allclose([m.probability for m in batched.matches], [m.probability for m in one.matches], atol=1e-4)
        assert explanation.pooling.shape == ((150 - 1) // recognizer.model.frame_step + 1,)  # 150 frames, subsampled


def test_10_the_app_runs_the_model_once_per_request(recognizer, tmp_path, monkeypatch):
    calls = []
    for method in ("forward", "embed", "forward_intermediates"):
        original = getattr(recognizer.model, method)
        monkeypatch.setattr(recognizer.model, method,
                            lambda *a, _m=method, _o=original, **k: calls.append(_m) or _o(*a, **k))
    handlers = app.Handlers(recognizer)
    label, verdict, features_plot, attention_plot, explanation = handlers.identify(None, clip_file(tmp_path, 1), 3)
    assert calls == ["forward_intermediates"] and features_plot is not None


def test_10_api_identify_answers_without_drawing(tiny_server):
    """API clients get the answer alone; the page draws the plots in a second event."""
    _, url, _, wav = tiny_server
    label, verdict = client(url).predict(handle_file(str(wav)), None, 3, api_name="/identify")
    speakers = [c for c in label["confidences"] if c["label"] != "unknown speaker"]  # beside the unknown share
    assert len(speakers) == 3 and "Analysed" in verdict
