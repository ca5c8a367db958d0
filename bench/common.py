"""What every benchmark script shares: machine facts, markdown tables, and its section of RESULTS.md.

Each script owns one section of bench/RESULTS.md between `<!-- BEGIN name -->` and
`<!-- END name -->` and rewrites only that, so the tables can be regenerated one at a time.
A section with more rows than a scoreboard needs puts a MORE line after its summary: RESULTS.md
then keeps the summary and a link, and bench/details/<name>.md the whole section.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
SPEECH = REPO.parent / "shared" / "speech"  # ../shared/speech beside the checkout
START_LOAD = os.getloadavg()[0]  # 1-minute load average when the benchmark was imported


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return re.search(r"^Model name:\s*(.+)$", out, re.M).group(1).strip()
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return platform.processor() or "unknown CPU"


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def versions() -> str:
    import torchaudio

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}", f"torchaudio {torchaudio.__version__}"]
    for name in ("speechbrain", "onnxruntime"):
        try:
            parts.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def machine() -> str:
    gpu = gpu_name() or "none"
    return f"{cpu_model()}, {os.cpu_count()} CPU threads (torch uses {torch.get_num_threads()}), GPU: {gpu}"


def memory_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), in MB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def command_line() -> str:
    return "python -m " + " ".join([__package__ + "." + Path(sys.argv[0]).stem] + [shlex.quote(a) for a in sys.argv[1:]])


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def header(title: str, wall_s: float) -> str:
    """Date, machine, versions, the command and how long it took."""
    today = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"## {title}\n\n"
            f"- date: {today}\n- machine: {machine()}\n- versions: {versions()}\n"
            f"- 1-minute load average at the start {START_LOAD:.2f}, at the end {os.getloadavg()[0]:.2f} "
            f"(this benchmark itself adds up to the threads it uses; more means other work slowed the timings)\n"
            f"- command: `{command_line()}` (wall time {wall_s / 60:.1f} min)\n")


MORE = "<!-- more -->"  # a line of a section's text: the summary above it goes to RESULTS.md, all of it to details/


def write_section(name: str, text: str, path: Path | None = RESULTS) -> None:
    """Replace section `name` of `path` (appended if absent); with path None, only print it.

    A text with a MORE line is cut there: `path` gets the part above it and a link to
    `details/<name>.md` beside `path`, which gets the whole text (less the MORE line)."""
    summary, cut, rest = text.partition(f"\n{MORE}\n")
    whole = f"{summary.rstrip()}\n\n{rest.lstrip()}" if cut else text
    print(whole)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if cut:
        details = path.parent / "details" / f"{name}.md"
        details.parent.mkdir(exist_ok=True)
        details.write_text(whole.strip() + "\n")
        text = f"{summary.rstrip()}\n\nThe whole section, every row: [details/{name}.md](details/{name}.md).\n"
        print(f"wrote {details}")
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
    print(f"wrote section {name!r} of {path}")


def short_budget(steps: int) -> list[str]:
    """`training.train` flags of the short-budget benchmarks (accuracy, ablation, precision): a tenth of
    the steps as warm-up, so that a short run still decays its learning rate, and the settings their
    tables were measured with where the long default recipe now differs (`TrainConfig`): 2-s crops
    (not 1.2 s), lr 2e-3 (not 4e-3), and a tenth of the training clips held out to pick best.pt (not none)."""
    return ["--set", f"warmup_steps={max(1, steps // 10)}", "--set", "segment_frames=200",
            "--set", "lr=0.002", "--set", "valid_fraction=0.1"]


def finished_score(run: Path) -> dict | None:
    """The score.json of a run folder that finished, else None (an interrupted run's files are removed,
    so it starts again)."""
    scored = run / "score.json"
    if scored.exists():
        return json.loads(scored.read_text())
    if run.exists():
        for path in run.iterdir():
            path.unlink()
    return None


def mean_std(values: list[float], scale: float = 100, digits: int = 1) -> str:
    """The mean, and ± the standard deviation when there are several values; percentages by default."""
    spread = f" ± {statistics.stdev(values) * scale:.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values) * scale:.{digits}f}{spread}"
