"""Plain-language Markdown for results and models, shared by the app and any other front end."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from .recognizer import Identification, Match, Recognizer, Verification


def markdown_text(text: str) -> str:
    """Text shown literally inside Markdown: an enrolled name like `[x](y)` stays a name, not a link,
    and `$$x^2$$` stays dollars (the app's Markdown also renders no LaTeX)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def display_name(match: Match) -> str:
    return f"{match.name} (enrolled)" if match.enrolled else match.name


def top_speakers(result: Identification) -> dict[str, float]:
    """{name: probability} best first, as `gr.Label` takes it."""
    return {display_name(m): m.probability for m in result.matches}


def threshold_note(recognizer: Recognizer) -> str:
    """How the same/different threshold was set, from the checkpoint's calibration record."""
    calibration = recognizer.calibration
    threshold = recognizer.threshold
    if "threshold" not in calibration:
        return (f"Threshold {threshold:.3f} is a default: this checkpoint carries no calibration, "
                "so same/different decisions are a rough guide.")
    note = f"Threshold {threshold:.3f}"
    if calibration.get("method"):
        note += f": {calibration['method']}"
    if calibration.get("eer") is not None:
        note += f" (equal error rate there: {float(calibration['eer']):.1%})"
    return note + "."


def verdict(result: Identification, recognizer: Recognizer) -> str:
    """The open-set answer: the closest known or enrolled speaker if close enough, else unknown."""
    lines = []
    nearest = max(result.matches, key=lambda m: m.score, default=None)
    if nearest is None or math.isnan(nearest.score):
        lines.append("### No open-set verdict\nThis model has no speaker prototypes to compare with.")
    elif result.best is not None:
        kind = "enrolled speaker" if result.best.enrolled else "one of the model's speakers"
        lines.append(f"### {markdown_text(result.best.name)}\n{kind}: cosine similarity **{result.best.score:.3f}** "
                     f"≥ threshold {result.threshold:.3f}")
    else:
        lines.append(f"### Unknown speaker\nno known speaker is close enough: the closest, "
                     f"{markdown_text(display_name(nearest))}, scores cosine **{nearest.score:.3f}** "
                     f"< threshold {result.threshold:.3f}")
    lines.append(f"Analysed {result.seconds:.2f} s of speech (silence removed). {threshold_note(recognizer)}")
    lines += [f"Note: {note}." for note in result.notes]
    return "\n\n".join(lines)


def verification(result: Verification, recognizer: Recognizer) -> str:
    if result.same:
        head = f"### Same speaker\ncosine similarity **{result.score:.3f}** ≥ threshold {result.threshold:.3f}"
    else:
        head = f"### Different speakers\ncosine similarity **{result.score:.3f}** < threshold {result.threshold:.3f}"
    return f"{head}\n\n{threshold_note(recognizer)}"


def speakers_by_source(speakers: list[str]) -> dict[str, list[str]]:
    """'source/name' speakers grouped by source ('' for names without one)."""
    groups = defaultdict(list)
    for speaker in speakers:
        source, _, name = speaker.rpartition("/")
        groups[source].append(name)
    return dict(sorted(groups.items()))


def _percent(value) -> str:
    return f"{float(value):.1%}" if isinstance(value, (int, float)) else "n/a"


def _training_data(info: dict) -> list[str]:
    """Where the training data came from: `info["training_data"]` if the checkpoint has it, else `info["data"]`."""
    data = info.get("training_data", {})
    counts = ", ".join(f"{info[k]} {k[2:]} clips" for k in ("n_train", "n_valid") if k in info)
    counts = f" ({counts})" if counts else ""
    lines = []
    if data.get("sources"):
        lines.append(f"- Training data{counts}:")
        lines += [f"  - **{name}**: {about}" for name, about in data["sources"].items()]
    elif "data" in info:
        lines.append(f"- Training data: `{info['data']}`{counts}")
    if data.get("held_out"):
        lines.append(f"- Held out from training: {data['held_out']}")
    if data.get("command"):
        lines.append(f"- Made by: `{data['command']}`")
    return lines


def _accuracy(info: dict, metrics: dict) -> list[str]:
    """Held-out accuracy (`training.evaluate`'s result in `info["evaluation"]`), else validation accuracy."""
    evaluation = info.get("evaluation") or {}
    lines = []
    if evaluation.get("top1") is not None:
        lines.append(f"- Accuracy on {evaluation.get('n', '?')} held-out clips: top-1 {_percent(evaluation['top1'])}, "
                     f"top-5 {_percent(evaluation.get('top5'))}")
        lines += [f"  - {source or 'other'}: top-1 {_percent(result.get('top1'))} on {result.get('n', '?')} clips"
                  for source, result in sorted(evaluation.get("per_source", {}).items())]
    elif metrics.get("valid_top1") is not None:
        lines.append(f"- Validation accuracy (clips held out from training): top-1 {_percent(metrics['valid_top1'])}, "
                     f"top-5 {_percent(metrics.get('valid_top5'))}")
    new = info.get("new_speakers") or {}
    if new.get("enroll_top1") is not None:
        lines.append(f"- New voices ({', '.join(new.get('speakers', []))}), unheard by a model of the same recipe: "
                     f"enrolled from {new.get('enroll_clips', '?')} clips each, then identified "
                     f"{_percent(new['enroll_top1'])} of {new.get('enroll_test_clips', '?')} clips")
    return lines


def model_summary(recognizer: Recognizer, path: str | Path) -> str:
    """Which checkpoint, its architecture, training data, held-out accuracy, threshold and speakers."""
    checkpoint = recognizer.checkpoint
    model, features = checkpoint.model_config, checkpoint.feature_config
    kind = "Conformer" if model.kind == "conformer" else "baseline transformer"
    lines = [
        "### Model",
        f"- Checkpoint: `{path}` (training step {checkpoint.step})",
        f"- {kind}: {model.n_layers} layers × {model.n_heads} attention heads, width {model.d_model}, "
        f"{model.emb_dim}-dim embedding; AM-softmax s={model.scale:g}, m={model.margin:g}",
        f"- Features: {features.n_mels} log-mel bins every {features.frame_seconds * 1000:g} ms at "
        f"{features.sample_rate} Hz, silence removed",
        *_training_data(checkpoint.info),
        *_accuracy(checkpoint.info, checkpoint.metrics),
        f"- Verification: {threshold_note(recognizer)}",
        f"\n### The model's {len(recognizer.speakers)} speakers",
    ]
    lines += [f"- **{source or 'speakers'}**: {', '.join(names)}"
              for source, names in speakers_by_source(recognizer.speakers).items()]
    return "\n".join(lines)
