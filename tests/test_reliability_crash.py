"""Crash safety: a training killed with SIGKILL resumes from its last checkpoint (or the one before,
when the last is damaged) and ends as if it had never stopped, with every validation logged once."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from speaker_app.checkpoint import load_checkpoint
from tests.conftest import ROOT
from tests.test_distributed import TINY, synthetic_course
from training.loop import truncate_metrics

STEPS = 50  # valid_every=5 in TINY: a checkpoint every 5 steps


def command(data, out, *extra):
    settings = [arg for setting in TINY for arg in ("--set", setting)]
    return [sys.executable, "-m", "training.train", "--data", str(data), "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "8", "--device", "cpu", "--no-progress", *settings, *extra]


def steps_logged(run):
    with open(run / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def resume(data, run):
    result = subprocess.run(command(data, run, "--resume"), cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A run SIGKILLed once it has written two checkpoints (last.pt and last.pt.prev)."""
    root = tmp_path_factory.mktemp("crash")
    data, run = synthetic_course(root / "data"), root / "run"
    process = subprocess.Popen(command(data, run), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (run / "last.pt.prev").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode != -signal.SIGKILL:
        pytest.fail(f"the run was not killed mid-way (exit {process.returncode}): {process.stderr.read()[-2000:]}")
    process.stderr.close()
    step = load_checkpoint(run / "last.pt").step
    assert 10 <= step < STEPS, step
    return data, run


def test_a_killed_run_resumes_to_the_same_end(killed, tmp_path):
    data, original = killed
    run = tmp_path / "run"
    shutil.copytree(original, run)
    resume(data, run)
    assert load_checkpoint(run / "last.pt").step == STEPS
    assert steps_logged(run) == list(range(5, STEPS + 1, 5))  # none lost, none twice


def test_a_damaged_last_checkpoint_gives_way_to_the_previous(killed, tmp_path):
    data, original = killed
    run = tmp_path / "run"
    shutil.copytree(original, run)
    previous = load_checkpoint(run / "last.pt.prev").step
    raw = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(raw[: len(raw) // 3])
    out = resume(data, run)
    assert "truncated or damaged; using the previous checkpoint" in out
    assert f"step={previous + 5} " in out  # training went on from the previous checkpoint
    assert load_checkpoint(run / "last.pt").step == STEPS
    assert steps_logged(run) == list(range(5, STEPS + 1, 5))


def test_metrics_are_cut_back_atomically_and_torn_rows_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss,train_acc,valid_loss,valid_top1,valid_top5,lr,steps_per_s,elapsed_s\n"
                    "5,1,0.5,1,0.5,1,0.01,3,1\n10,1,0.5,1,0.5,1,0.01,3,2\n15,1,0.5,1,0.5,1,0.01,3,3\n1")
    truncate_metrics(path, 10)
    assert steps_logged(tmp_path) == [5, 10] and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
    path.write_text(path.read_text() + "1")  # a row torn by a crash right after step 10's checkpoint
    truncate_metrics(path, 10)
    assert steps_logged(tmp_path) == [5, 10]
