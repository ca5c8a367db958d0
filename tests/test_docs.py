"""Text that tests keep true: the README's commands are what CI runs, every `python -m` command the
README and docs/ name exists here and answers --help, and the README's headline figures are the
scoreboard's (bench/RESULTS.md)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BENCH_ONLY = ("speechbrain", "resemblyzer", "webrtcvad")  # bench/requirements.txt: --help must not need them


def commands(text: str) -> list[str]:
    """The modules of every `python -m MODULE`, `python3 -m` and `torchrun ... -m` in a markdown text."""
    text = text.replace("\\\n", " ")  # a command continued on the next line
    return re.findall(r"\b(?:python3?|torchrun)\b[^\n`]*?\s-m\s+([A-Za-z_][\w.]*)", text)


def ours(module: str) -> bool:
    """A module of this repository: its top package is a folder of the checkout (so not pytest, venv, pip)."""
    return (ROOT / module.split(".")[0] / "__init__.py").is_file()


MODULES = sorted({m for path in DOCS for m in commands(path.read_text()) if ours(m)})


def test_the_commands_are_found():
    assert commands("run `python -m bench.load --help`, then\n    torchrun --nnodes=2 \\\n        -m training.train "
                    "--data D\n    python3 -m venv .venv && python -m pytest -q -m 'not slow'") == \
        ["bench.load", "training.train", "venv", "pytest"]
    assert ours("training.train") and not ours("pytest") and not ours("venv")
    assert {"training.train", "training.evaluate", "training.export", "bench.new_voices"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_named_in_the_docs_exists(module):
    path = ROOT.joinpath(*module.split("."))
    assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), f"no module {module} in {ROOT}"


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_each_module_named_in_the_docs_answers_help(module):
    # as `python -m MODULE --help`, with the bench-only packages made unimportable
    run = ("import runpy, sys\n"
           f"sys.modules.update(dict.fromkeys({BENCH_ONLY!r}))\n"
           f"sys.argv = [{module!r}, '--help']\n"
           f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    done = subprocess.run([sys.executable, "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def normal(command: str) -> str:
    """A shell step without quiet/report flags and output redirection, so README and CI steps compare."""
    return " ".join(word for word in command.split() if word not in {"-q", "-rs", ">/dev/null", "2>&1"})


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^Run the tests.*\n\n    (.+)$", readme, re.M).group(1)
    steps = [normal(step) for step in command.split(" && ")]
    ci = [normal(line.split(" || ")[0]) for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert steps == [line for line in ci if line in steps], (steps, ci)
    assert steps[-1] == "python -m pytest"


FIGURE = re.compile(r"\d[\d,]*\.\d+|\d[\d,]*(?=%| ms)")  # a decimal, a percentage or milliseconds


def figures(text: str) -> list[str]:
    """The measured figures of a text, without thousands separators."""
    return [figure.replace(",", "") for figure in FIGURE.findall(text)]


def headline() -> str:
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    return results.split("## Headline", 1)[1].split("\n## ", 1)[0]


def test_the_readme_headline_figures_are_the_scoreboards():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How good it is", 1)[1].split("\n## ", 1)[0]
    shown, board = figures(section), set(figures(headline()))
    assert len(shown) >= 8
    assert [f for f in shown if f not in board] == []


def test_the_scoreboards_known_speakers_are_the_shipped_checkpoints(default_checkpoint):
    from speaker_app.checkpoint import load_checkpoint

    info = load_checkpoint(default_checkpoint).info
    row = next(line for line in headline().splitlines() if line.startswith("| Known speakers"))
    assert f"| {100 * info['evaluation']['top1']:.2f}% |" in row


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [*DOCS, ROOT / "bench" / "RESULTS.md", *sorted((ROOT / "bench" / "notes").glob("*.md"))],
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            broken += [target] if anchor not in {slug(h) for h in headings} else []
    assert broken == []
