"""speaker_app.heap: the app's allocator settings and its periodic heap trim."""

import threading
import time

from speaker_app import heap


def test_trim_every_trims_until_stopped(monkeypatch):
    calls = threading.Semaphore(0)
    monkeypatch.setattr(heap, "trim", calls.release)
    stop = heap.trim_every(0.01)
    assert all(calls.acquire(timeout=5) for _ in range(3))  # it keeps trimming
    stop.set()
    time.sleep(0.05)
    while calls.acquire(blocking=False):  # drain a call that was under way
        pass
    time.sleep(0.05)
    assert not calls.acquire(blocking=False)


def test_trim_gives_freed_heap_memory_back():
    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    # Many small blocks stay in the heap when freed (below glibc's mmap threshold); a trim returns them.
    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MB
    del blocks[:-1]  # the last one keeps the heap's top in use, so only a trim can release the rest
    before = resident_mb()
    heap.trim()
    assert resident_mb() < before - 100
    heap.limit_arenas(2)  # allowed at any time; nothing to observe but that it does not fail
