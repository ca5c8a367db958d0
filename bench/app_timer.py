"""The in-process half of `bench.app_latency`: one source tree's Identify handler, timed stage by stage.

    python bench/app_timer.py --tree TREE --checkpoint CKPT --clip CLIP [--threads N]

Run as a script (never imported by that tree), it puts TREE first on sys.path and imports that
tree's `app`, so the same measurement runs on this checkout or on another revision's files. It
answers on stdout, one JSON line each: first what it loaded (after two warm-up runs), then, for
each line `N` read from stdin, N timed runs. A run is the whole Identify tab: the handler (decode,
features, model, top-k, verdict, attention maps, both figures) and Gradio's post-processing of
its outputs (the figures rendered to PNG, the label). Each stage's time is that of the functions
named in STAGES, less the time of other stages' functions they call; "other" is the rest.
Functions a tree lacks are left out, so an older revision still gives its total (a stage none
of whose functions it has is said so, and counted in "other").
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict

# stage -> (module, attribute path) of the functions whose time is that stage's
STAGES = {
    "decoding": [("speaker_app.recognizer", "read_audio")],
    "features": [("speaker_app.recognizer", "features_from_array"), ("speaker_app.recognizer", "check_speech")],
    "windows": [("speaker_app.recognizer", "infer"), ("speaker_app.recognizer", "infer_explained")],
    "model": [],  # the recognizer's network and an ensemble's members (embed, forward_intermediates): see load()
    "scoring": [("speaker_app.recognizer", "Recognizer.decide"), ("speaker_app.describe", "top_speakers"),
                ("speaker_app.describe", "verdict")],
    "explanation": [("speaker_app.recognizer", "shrink_map"), ("speaker_app.inference", "_crop")],
    # built, or given their data: by the handlers of the revision at hand (older ones return figures, newer
    # ones draw into kept figures and return their PNG)
    "figures": [("app", "Handlers.features_plot"), ("app", "Handlers.show_attention"),
                ("app", "Handlers.features_figure"), ("app", "Handlers.attention_figure")],
    # drawn by Agg and encoded: by the handlers (newer revisions) or Gradio's post-processing (run_once)
    "drawing + PNG": [("speaker_app.plots", "png")],
}
ORDER = [*STAGES, "other"]
TIMED_HERE = {"drawing + PNG"}  # also timed around Gradio's post-processing (run_once): never missing


class Clock:
    """Exclusive time per stage: a wrapped call's time less that of wrapped calls inside it."""

    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self.local = threading.local()

    def wrap(self, stage: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            stack = self.local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # time spent in wrapped calls inside this one
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = stack.pop()
                self.totals[stage] += elapsed - inner
                if stack:
                    stack[-1] += elapsed
        return timed

    def stage(self, stage: str):
        """A context that counts its time to `stage` (at the top level)."""
        clock = self

        class Timing:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *_):
                clock.totals[stage] += time.perf_counter() - self.start

        return Timing()


def wrap_by_name(clock: Clock) -> list[str]:
    """Wrap every function of STAGES that this tree has; -> the stages it has none of."""
    import importlib

    missing = []
    for stage, names in STAGES.items():
        found = 0
        for module_name, path in names:
            owner = importlib.import_module(module_name)
            *parents, attribute = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            function = inspect.getattr_static(owner, attribute, None)
            if function is None:
                continue
            found += 1
            if isinstance(function, staticmethod):
                setattr(owner, attribute, staticmethod(clock.wrap(stage, function.__func__)))
            else:
                setattr(owner, attribute, clock.wrap(stage, function))
        if names and not found and stage not in TIMED_HERE:
            missing.append(stage)
    return missing


def load(tree: str, checkpoint: str, threads: int):
    """This tree's app and a Handlers serving `checkpoint`, instrumented; -> (run_once, facts)."""
    sys.path[:] = [tree] + [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(__file__)]
    os.environ["SPEAKER_CHECKPOINT"] = checkpoint  # what `import app` serves: the same model, loaded once more
    os.environ["SPEAKER_GALLERIES"] = "per-visitor"  # and no gallery folder
    import torch

    if threads:
        torch.set_num_threads(threads)
    import gradio as gr

    import app

    if not threads and hasattr(app, "default_threads"):
        torch.set_num_threads(app.default_threads())
    clock = Clock()
    missing = wrap_by_name(clock)
    handlers = app.Handlers(app.load_recognizer(checkpoint, tempfile.mkdtemp()))
    model = handlers.recognizer.model
    for network in [model, *getattr(model, "members", [])]:
        for method in ("embed", "forward_intermediates"):
            setattr(network, method, clock.wrap("model", getattr(network, method)))
    plot, label = gr.Plot(format="png"), gr.Label()

    def run_once(clip: str) -> dict:
        clock.totals.clear()
        start = time.perf_counter()
        top, verdict, features, attention, _ = handlers.identify(clip, None, 5, 1, 0)
        label.postprocess(top)
        with clock.stage("drawing + PNG"):
            plot.postprocess(features)
            plot.postprocess(attention)
        total = time.perf_counter() - start
        stages = {stage: clock.totals.get(stage, 0.0) for stage in STAGES}
        stages["other"] = total - sum(stages.values())
        return {"total": total, "stages": stages}

    config = handlers.recognizer.checkpoint.model_config
    facts = {"tree": tree, "threads": torch.get_num_threads(), "missing": missing,
             "members": getattr(config, "members", 1), "window_frames": getattr(config, "window_frames", 0)}
    return run_once, facts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", required=True, help="the source tree whose app to time")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the app's own default)")
    args = parser.parse_args(argv)
    answer = sys.stdout
    sys.stdout = sys.stderr  # whatever the app prints stays off the answers
    run_once, facts = load(os.path.abspath(args.tree), os.path.abspath(args.checkpoint), args.threads)
    for _ in range(2):  # warm-up
        run_once(args.clip)
    print(json.dumps(facts), file=answer, flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        runs = [run_once(args.clip) for _ in range(int(line))]
        print(json.dumps(runs), file=answer, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
