"""Dynamic batching and the one-pass explanation: requests that wait together run together, each gets
its own answer, failures reach every request of their batch, and the explained answer is infer()'s."""

import threading
import time

import pytest
import torch

from speaker_app.batching import Batcher
from speaker_app.inference import CHUNK_FRAMES, EXPLAIN_FRAMES, infer, infer_explained
from speaker_app.model import ModelConfig, build_model
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


@pytest.mark.parametrize("kind", ["conformer", "baseline"])
def test_the_explained_answer_is_infers(kind):
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_heads=2, n_layers=2, ff_dim=64, emb_dim=16) if kind == "conformer" \
        else ModelConfig.baseline()
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
        assert len(inside.attention) == (config.n_layers if kind == "conformer" else 1)
    short = insides[0]  # fits one chunk and the explanation: its weights are the answer's own
    assert torch.allclose(short.pooling.sum(), torch.tensor(1.0), atol=1e-5)
