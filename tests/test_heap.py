"""speaker_app.heap: the app's allocator settings and its periodic heap trim."""

import subprocess
import sys
import threading
import time
from pathlib import Path

from speaker_app import heap


def test_trim_every_trims_until_stopped(monkeypatch):
    # Count only this test's thread: an app started in-process by another test trims too.
    before = set(threading.enumerate())
    callers = []
    monkeypatch.setattr(heap, "trim", lambda: callers.append(threading.current_thread()))
    stop = heap.trim_every(0.01)
    (ours,) = [t for t in threading.enumerate() if t not in before and t.name == "heap-trim"]
    deadline = time.monotonic() + 5
    while callers.count(ours) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert callers.count(ours) >= 3  # it keeps trimming
    stop.set()
    ours.join(5)
    assert not ours.is_alive()  # and stops when told


def test_trim_gives_freed_heap_memory_back():
    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    # Many small blocks stay in the heap when freed (below glibc's mmap threshold); a trim returns them.
    # (Measured against the size before allocating: a trim thread of an app started in-process may trim too.)
    start = resident_mb()
    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MB
    del blocks[:-1]  # the last one keeps the heap's top in use, so only a trim can release the rest
    heap.trim()
    assert resident_mb() < start + 90
    heap.limit_arenas(2)  # allowed at any time; nothing to observe but that it does not fail


REALLOCATE = """
import resource, sys, torch
from speaker_app import heap
if sys.argv[1] == "reuse":
    heap.reuse_big_blocks()
faults = []
for _ in range(20):  # what training steps do with their biggest activations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20 // 4)  # a 64 MB tensor, filled and freed at once
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-8:]))  # once the heap holds enough free blocks (the first few steps grow it)
"""


def test_reuse_big_blocks_stops_faulting_in_the_same_memory_every_step():
    def faults(mode):  # a fresh process each: the setting is process-wide
        done = subprocess.run([sys.executable, "-c", REALLOCATE, mode], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parents[1])
        return int(done.stdout)

    mapped_afresh = faults("default")  # glibc maps a block that big from the kernel each time
    assert mapped_afresh > 8 * 15_000  # 16,384 pages of 4 KB each time
    assert faults("reuse") < mapped_afresh / 8  # reused from the heap: no new pages
