"""The app under a small load (bench/load.py runs the full one): concurrent users identify while
others enroll; no request fails, the gallery holds every name, memory stays put; and an upload
over the size limit is refused while the app keeps serving."""

import time

import pytest
from gradio_client import handle_file

import app
from tests.helpers import (client, enroll_once, five_second_clip, gallery_names, identify_once, memory_mb,
                           run_together, serving_tiny)


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    """`python app.py` serving a tiny untrained model: (process, url, folder, 5 s clip)."""
    folder = tmp_path_factory.mktemp("load")
    with serving_tiny(folder) as (process, url):
        yield process, url, folder, five_second_clip(folder)


def test_concurrent_identify_and_enroll(tiny_app):
    process, url, folder, clip = tiny_app
    warm = client(url)
    identify_once(warm, clip)
    voices = [five_second_clip(folder, 0.9 - 0.02 * i, f"voice-{i}.wav") for i in range(5)]  # one per visitor
    enroll_once(warm, "warm-up", voices[4])
    before = memory_mb(process.pid)
    names = [f"visitor {i}" for i in range(4)]
    users = [client(url) for _ in range(8)]  # connected before the clock starts

    def identify_three(user):
        return lambda: [identify_once(user, clip) for _ in range(3)]

    start = time.perf_counter()
    results = run_together([identify_three(user) for user in users[:4]]
                           + [lambda u=user, n=name, v=voice: enroll_once(u, n, v)
                              for user, name, voice in zip(users[4:], names, voices)])
    assert [r for r in results if isinstance(r, Exception)] == [], f"after {time.perf_counter() - start:.1f} s"
    assert gallery_names(folder) == sorted(["warm-up", *names])  # parses, and no enrollment lost
    growth = memory_mb(process.pid) - before
    assert growth < 100, f"server memory grew by {growth:.0f} MB"
    assert process.poll() is None


def test_an_upload_over_the_limit_is_refused(tiny_app, tmp_path):
    process, url, _, clip = tiny_app
    limit = int(app.MAX_UPLOAD.removesuffix("mb")) * 1024 * 1024
    big = tmp_path / "big.wav"
    big.write_bytes(clip.read_bytes()[:44] + bytes(limit + 1024))  # a WAV header, then zeros past the limit
    user = client(url)
    with pytest.raises(Exception, match="(?i)maximum|too large|exceeds") as caught:
        user.predict(handle_file(str(big)), None, 3, api_name="/identify")
    assert "no speech" not in str(caught.value)  # refused at the upload, not analysed
    identify_once(user, clip)  # still serving
    assert process.poll() is None
