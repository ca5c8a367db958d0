"""Dynamic batching and the one-pass explanation: requests that wait together run together, each gets
its own answer, failures reach every request of their batch, and the explained answer is infer()'s."""

import threading
import time

import pytest
import torch

from speaker_app.batching import Batcher
from speaker_app.inference import CHUNK_FRAMES, EXPLAIN_FRAMES, infer, infer_explained, windows
from speaker_app.model import ModelConfig
from speaker_app.registry import build_model
from tests.helpers import run_together


def test_waiting_requests_run_as_one_batch_and_get_their_own_results():
    started, release = threading.Event(), threading.Event()
    batches = []

    def run(items):
        batches.append(list(items))
        if len(batches) == 1:  # hold the model busy so that the others queue up
            started.set()
            release.wait(10)
        return [item * 10 for item in items]

    batcher = Batcher(run, max_batch=3)
    first = threading.Thread(target=batcher, args=(0,))
    first.start()
    started.wait(10)
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: batcher(i)})) for i in range(1, 6)]
    for thread in threads:
        thread.start()
    while len(batcher._queue) < 5:
        time.sleep(0.01)
    release.set()
    for thread in [first, *threads]:
        thread.join(10)
    assert results == {i: i * 10 for i in range(1, 6)}
    assert [len(batch) for batch in batches] == [1, 3, 2] and batcher.batch_sizes == [1, 3, 2]


def test_a_failed_batch_fails_its_requests_and_the_next_batch_runs():
    calls = []

    def run(items):
        calls.append(items)
        if len(calls) == 1:
            raise MemoryError("out of memory")
        return items

    batcher = Batcher(run)
    with pytest.raises(MemoryError):
        batcher("a")
    assert batcher("b") == "b"
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(run, max_batch=0)


def test_concurrent_callers_all_get_answers():
    batcher = Batcher(lambda items: [x + 1 for x in items], max_batch=4)
    assert run_together([lambda i=i: batcher(i) for i in range(20)]) == list(range(1, 21))


@pytest.mark.parametrize("kind", ["conformer", "windowed", "baseline"])
def test_the_explained_answer_is_infers(kind):
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16) if kind == "conformer" \
        else ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16, window_frames=150) \
        if kind == "windowed" else ModelConfig.baseline()
    model = build_model(config, 5).eval()
    utterances = [torch.randn(n, 40) for n in (120, 1700, CHUNK_FRAMES + 500, 37)]  # one is chunked
    plain = infer(model, utterances)
    explained, insides = infer_explained(model, utterances)
    assert torch.allclose(explained.logits, plain.logits, atol=1e-4)
    assert torch.allclose(explained.embeddings, plain.embeddings, atol=1e-5)
    assert (explained.logits.argmax(1) == plain.logits.argmax(1)).all()
    step = model.frame_step
    for utterance, inside in zip(utterances, insides):
        frames = min(len(utterance), EXPLAIN_FRAMES)
        shown = -(-frames // step)
        assert inside.frames == frames and inside.pooling.shape == (shown,)
        assert all(maps.shape == (config.n_heads, shown, shown) for maps in inside.attention)
        assert len(inside.attention) == (1 if kind == "baseline" else config.n_layers)
    short = insides[0]  # fits one chunk and the explanation: its weights are the answer's own
    assert torch.allclose(short.pooling.sum(), torch.tensor(1.0), atol=1e-5)


def test_windows_overlap_by_half_and_end_with_the_utterance():
    features = torch.arange(250.0)[:, None].expand(250, 40)
    pieces = windows(features, 100)
    assert [int(p[0, 0]) for p in pieces] == [0, 50, 100, 150] and all(len(p) == 100 for p in pieces)
    assert int(pieces[-1][-1, 0]) == 249
    assert [len(p) for p in windows(features[:100], 100)] == [100]  # no longer than a window: whole
    assert [int(p[0, 0]) for p in windows(features[:101], 100)] == [0, 1]


def test_a_windowed_model_embeds_the_mean_of_its_windows():
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16, window_frames=100)
    model = build_model(config, 5).eval()
    utterance = torch.randn(260, 40)
    with torch.no_grad():
        pieces = torch.stack(windows(utterance, 100))
        expected = torch.nn.functional.normalize(model.embed(pieces, torch.full((len(pieces),), 100)).mean(0), dim=0)
    assert torch.allclose(infer(model, [utterance]).embeddings[0], expected, atol=1e-5)
    whole = build_model(ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16), 5).eval()
    whole.load_state_dict(model.state_dict())
    assert not torch.allclose(infer(whole, [utterance]).embeddings[0], expected, atol=1e-3)
    with pytest.raises(ValueError, match="window_frames"):
        ModelConfig(window_frames=-1)
