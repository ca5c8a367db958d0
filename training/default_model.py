"""Reproduce the default model in checkpoints/ from ../shared/speech, in one command.

    python -m training.default_model --speech ../shared/speech [--work runs/default] [--out checkpoints/default.pt]

1. prepare all 31 speakers, holding out 20% of each speaker's clips (seed 0);
2. train the default recipe on the rest;
3. train the same recipe without LEAVE_OUT (one speaker per source) and enroll
   those speakers from 5 clips each: how embeddings carry over to new voices,
   and the verification threshold (equal-error-rate point on those speakers);
4. evaluate on the held-out clips and export a slim checkpoint (no optimizer
   state) with the evaluation, calibration and data provenance inside.

Every step resumes or reuses what an earlier run of this command left in --work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from speaker_app.checkpoint import load_checkpoint, save_checkpoint

from . import prepare, train
from .evaluate import evaluate

LEAVE_OUT = ["vcc2016/TM3", "emodb/16", "fsdd/yweweler", "asterisk/june"]
TEST_FRACTION, SEED = 0.2, 0
SOURCES = {
    "vcc2016": "Voice Conversion Challenge 2016 (read English sentences, 16 kHz), ODC-By 1.0",
    "emodb": "Berlin Database of Emotional Speech (acted German, 16 kHz), free for research; Burkhardt et al. 2005",
    "fsdd": "Free Spoken Digit Dataset (English digits, 8 kHz), CC BY-SA 4.0",
    "asterisk": "Asterisk telephony prompts (en, es, fr, it, ru; 8 kHz; Allison Smith, June Wallack, "
                "Marco Menardi / Paola Dal Zot), CC BY-SA 3.0 (ru: CC BY 3.0)",
}


def prepared(speech: Path, folder: Path, exclude: list[str]) -> Path:
    if not (folder / "testdata.json").exists():
        argv = [str(speech), str(folder), "--test-fraction", str(TEST_FRACTION), "--seed", str(SEED)]
        prepare.main(argv + [a for speaker in exclude for a in ("--exclude", speaker)])
    return folder


def trained(data: Path, run: Path, extra: list[str]) -> Path:
    """Train (or finish training) the default recipe; returns best.pt."""
    argv = ["--data", str(data), "--out", str(run), *extra]
    if (run / "last.pt").exists():
        if load_checkpoint(run / "last.pt").step >= json.loads((run / "config.json").read_text())["steps"]:
            return run / "best.pt"
        argv.append("--resume")
    train.main(argv)
    return run / "best.pt"


def held_out_clips(data: Path) -> list[str]:
    """The audio files (relative to the speech folder) of the held-out split, which the app's examples come from."""
    return sorted(u["audio"] for u in json.loads((data / "testdata.json").read_text())["utterances"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.default_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--speech", type=Path, default=Path("../shared/speech"))
    parser.add_argument("--work", type=Path, default=Path("runs/default"))
    parser.add_argument("--out", type=Path, default=Path("checkpoints/default.pt"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to training.train")
    args = parser.parse_args(argv)
    extra = ["--no-progress", *[a for s in args.set for a in ("--set", s)]]
    started = time.time()

    data = prepared(args.speech, args.work / "data", [])
    best = trained(data, args.work / "run", extra)
    held_out = prepared(args.speech, args.work / "data-leave-out", LEAVE_OUT)
    leave_out_best = trained(held_out, args.work / "run-leave-out", extra)

    test = evaluate(best, data=data, progress=False)
    new_voices = evaluate(leave_out_best, audio_dir=args.speech, include=LEAVE_OUT, enroll=5, progress=False)
    checkpoint = load_checkpoint(best)
    checkpoint.training_state = {}
    checkpoint.info.update({
        "training_data": {"sources": SOURCES, "held_out": f"{TEST_FRACTION:.0%} of each speaker's clips, seed {SEED}",
                          "command": "python -m training.default_model --speech ../shared/speech",
                          "held_out_clips": held_out_clips(data)},
        "evaluation": test,
        "new_speakers": {"speakers": LEAVE_OUT, **new_voices},
        "calibration": {
            "threshold": new_voices["pair_threshold"], "eer": new_voices["pair_eer"],
            "method": (f"equal-error-rate point of clip-vs-clip cosine scores on {len(LEAVE_OUT)} speakers "
                       f"({', '.join(LEAVE_OUT)}) that a model of the same recipe never heard"),
        },
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint, args.out)
    report = {k: checkpoint.info[k] for k in ("evaluation", "new_speakers", "calibration")}
    report["training_time_s"] = load_checkpoint(args.work / "run" / "last.pt").metrics.get("elapsed_s")
    report["total_time_s"] = time.time() - started
    (args.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
