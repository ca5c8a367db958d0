"""Assemble trained models of one config into an ensemble checkpoint (`speaker_app.model.Ensemble`).

    python -m training.ensemble A.pt B.pt [C.pt ...] --out ENSEMBLE.pt

The members must share their config (window_frames included), their features and their classes, in
the same order. The ensemble's embedding is their unit embeddings joined (a score is the mean of
theirs), so decisions calibrated for any one member do not hold for it: the result carries no
calibration and no cohort (a member's cohort names no speakers, so two cannot be matched row by row),
and scores by cosine until both are made again; for the default model with

    python -m training.default_model --speech ../shared/speech --corpus CORPUS --work WORK \\
        --recalibrate ENSEMBLE.pt --out checkpoints/default.pt

Its info is the first member's, with every member's training command listed under "ensemble".
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from speaker_app.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


def assemble(members: list[Checkpoint], names: list[str]) -> Checkpoint:
    """One checkpoint holding `members` as an ensemble; `names` say where each came from (kept in its info)."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two models")
    first = members[0]
    for name, member in zip(names, members):
        if member.model_config.members > 1:
            raise ValueError(f"{name} is an ensemble already: give its members")
        differences = [what for what, same in (
            ("model config", member.model_config == first.model_config),
            ("features", member.feature_config == first.feature_config),
            ("classes", member.speakers == first.speakers)) if not same]
        if differences:
            raise ValueError(f"{name} differs from {names[0]} in its {' and '.join(differences)}")
    state = {f"members.{i}.{key}": value for i, member in enumerate(members)
             for key, value in member.state_dict.items()}
    stale = ("calibration", "cohort", "evaluation", "new_speakers")  # records of the first member alone
    info = {key: value for key, value in first.info.items() if key not in stale}
    info["ensemble"] = [{"checkpoint": name, "step": member.step,
                         "command": member.info.get("training_data", {}).get("command", "")}
                        for name, member in zip(names, members)]
    return replace(first, model_config=replace(first.model_config, members=len(members)), state_dict=state,
                   metrics={}, info=info, training_state={}, cohort=None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="trained checkpoints of one config and one set of classes")
    parser.add_argument("--out", required=True, type=Path, help="where to write the ensemble checkpoint")
    args = parser.parse_args(argv)
    try:
        members = [load_checkpoint(path) for path in args.checkpoints]
        ensemble = assemble(members, [str(path) for path in args.checkpoints])
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    save_checkpoint(ensemble, args.out)
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out}: {len(members)} models, {ensemble.model_config.embedding_size}-dim embedding, "
          f"{size:.1f} MB; its cohort and decisions must be made again (see python -m training.ensemble --help)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
