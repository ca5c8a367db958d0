"""bench.app_latency's plumbing, on a tiny model: the stage breakdown adds up, and another git revision
(here HEAD, from `git archive`) is timed in the same run. Nothing here holds a timing to a figure."""

from __future__ import annotations

import subprocess
import sys

import pytest

from speaker_app.checkpoint import save_checkpoint
from tests.conftest import ROOT

from helpers import tiny

STAGES = ["decoding", "features", "windows", "model", "scoring", "explanation", "figures", "drawing + PNG", "other"]


@pytest.mark.slow
def test_the_breakdown_and_the_baseline_come_from_one_run(tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(tiny(), checkpoint)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    done = subprocess.run([sys.executable, "-m", "bench.app_latency", "--print-only", "--runs", "2", "--rounds", "2",
                           "--threads", "1", "--checkpoint", str(checkpoint), "--baseline", "HEAD",
                           "--baseline-checkpoint", str(checkpoint)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    revision = head.stdout.strip()
    assert f"this checkout / {revision}: **" in done.stdout
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| stage", "| ---"))}
    assert [r for r in rows if not r.startswith("**")] == STAGES
    for column in range(2):  # this checkout, then the revision
        stages = [float(rows[stage][column].strip(" |")) for stage in STAGES]
        total = float(rows["**total** (median of the runs)"][column].strip(" |*"))
        assert min(stages[:-1]) >= 0 and stages[STAGES.index("model")] > 0 and total > 0
    assert "has none of the functions" not in done.stdout
