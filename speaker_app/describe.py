"""Plain-language Markdown for results and models, shared by the app and any other front end."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from .decisions import REFERENCE_SECONDS
from .recognizer import Identification, Match, Recognizer, Verification


def markdown_text(text: str) -> str:
    """Text shown literally inside Markdown: an enrolled name like `[x](y)` stays a name, not a link,
    and `$$x^2$$` stays dollars (the app's Markdown also renders no LaTeX)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def display_name(match: Match) -> str:
    return f"{match.name} (enrolled)" if match.enrolled else match.name


UNKNOWN = "unknown speaker"  # the share of "none of these" among the top-k probabilities


def top_speakers(result: Identification) -> dict[str, float]:
    """{name: probability} best first, as `gr.Label` takes it, with the share of "unknown speaker"."""
    shares = {display_name(m): m.probability for m in result.matches}
    shares[UNKNOWN] = result.unknown
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def score_name(kind: str) -> str:
    return "AS-norm score" if kind == "as-norm" else "cosine similarity"


def identification_note(recognizer: Recognizer, brief: bool = False) -> str:
    """How the identification (clip vs speaker) threshold was set, from the checkpoint's calibration."""
    rule = recognizer.decisions.identification
    if rule.known_threshold is None:
        which = f"Identification threshold {rule.threshold:.3f}"
    else:
        which = (f"Identification thresholds {rule.known_threshold:.3f} for the model's speakers and "
                 f"{rule.threshold:.3f} for enrolled ones")
        if rule.per_log_test_seconds or rule.per_log_enroll_seconds:
            held = rule.seconds_range or {}
            within = (f", held to {held['test'][0]:.1f}-{held['test'][1]:.1f} s and "
                      f"{held['enroll'][0]:.1f}-{held['enroll'][1]:.1f} s" if {"test", "enroll"} <= set(held) else "")
            which += (f" (at {REFERENCE_SECONDS['test']:g} s of speech enrolled from {REFERENCE_SECONDS['enroll']:g} s; "
                      f"{rule.per_log_test_seconds:+.2f} and {rule.per_log_enroll_seconds:+.2f} per unit of the log of "
                      f"each{within})")
        if rule.gallery_thresholds:
            steps = ", ".join(f"{t:.2f} with {n}" for n, t in rule.gallery_thresholds)
            which += f"; the enrolled speakers' falls with fewer of them enrolled: {steps} enrolled"
    text = f"{which} ({score_name(recognizer.scorer.kind)}): {rule.summary if brief else rule.method}"
    return text if rule.calibrated else text + "; names are a rough guide"


def verification_note(recognizer: Recognizer) -> str:
    """How the verification (clip vs clip, same/different) threshold was set."""
    rule = recognizer.decisions.verification
    text = f"Verification threshold {rule.threshold:.3f} ({score_name(recognizer.scorer.kind)}): {rule.method}"
    return text if rule.calibrated else text + "; same/different decisions are a rough guide"


def probability_note(recognizer: Recognizer, brief: bool = False) -> str:
    decisions = recognizer.decisions
    if brief:
        how = "fitted on held-out trials" if decisions.probability_calibrated else "defaults, not fitted"
        return f"Probabilities: P(known speaker), at most 99%, times each speaker's share ({how})"
    return (f"Probabilities: P(known speaker) rises with the best score (slope {decisions.slope:.3g}, 50% at the "
            f"identification threshold, at most 99%) and is shared among the speakers by a softmax at "
            f"temperature {decisions.temperature:.3g}; the rest is \"{UNKNOWN}\" ({decisions.probability_method})")


def threshold_note(recognizer: Recognizer) -> str:
    """Both thresholds and how each was set."""
    return f"{identification_note(recognizer)}. {verification_note(recognizer)}."


def verdict(result: Identification, recognizer: Recognizer) -> str:
    """The open-set answer: the best known or enrolled speaker if close enough, else unknown, or no speech."""
    lines = []
    nearest = max(result.matches, key=lambda m: m.score, default=None)
    name = score_name(result.score_kind)
    known = f"probability that it is someone known: {1 - result.unknown:.0%}"
    if not result.speech:
        lines.append("### No speech found\nthis does not sound like speech, so no speaker is named")
    elif nearest is None or math.isnan(nearest.score):
        lines.append("### No open-set verdict\nThis model has no speaker prototypes to compare with.")
    elif result.best is not None:
        kind = "enrolled speaker" if result.best.enrolled else "one of the model's speakers"
        lines.append(f"### {markdown_text(result.best.name)}\n{kind}: {name} **{result.best.score:.3f}** "
                     f"≥ identification threshold {result.threshold:.3f}; {known}")
    else:
        lines.append(f"### Unknown speaker\nno known speaker is close enough: the closest, "
                     f"{markdown_text(display_name(nearest))}, has {name} **{nearest.score:.3f}** "
                     f"< identification threshold {result.threshold:.3f}; {known}")
    lines.append(f"Analysed {result.seconds:.2f} s of speech (silence removed). "
                 f"{identification_note(recognizer, brief=True)}. {probability_note(recognizer, brief=True)}; "
                 "the Model tab says how each was set.")
    lines += [f"Note: {note}." for note in result.notes]
    return "\n\n".join(lines)


def verification(result: Verification, recognizer: Recognizer) -> str:
    name = score_name(result.score_kind)
    if result.same:
        head = f"### Same speaker\n{name} **{result.score:.3f}** ≥ verification threshold {result.threshold:.3f}"
    else:
        head = f"### Different speakers\n{name} **{result.score:.3f}** < verification threshold {result.threshold:.3f}"
    if result.score_kind != "cosine":
        head += f" (cosine {result.cosine:.3f})"
    return f"{head}\n\n{verification_note(recognizer)}."


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
    if data.get("recalibrated"):
        lines.append(f"- Made again: {data['recalibrated']}")
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
        *([f"- Ensemble of {model.members} such models, trained apart: their unit embeddings joined into one "
           f"{model.embedding_size}-dim embedding (a score is the mean of theirs); attention maps are the first's"]
          if model.members > 1 else []),
        *([f"- Embedding windows: a clip longer than {model.window_frames * features.frame_seconds:g} s is embedded as "
           "the mean of half-overlapping windows of that length"] if model.window_frames else []),
        f"- Features: {features.n_mels} log-mel bins every {features.frame_seconds * 1000:g} ms at "
        f"{features.sample_rate} Hz, silence removed",
        *_training_data(checkpoint.info),
        *_accuracy(checkpoint.info, checkpoint.metrics),
        f"- Scores: {recognizer.scorer.describe()}",
        f"- Identification: {identification_note(recognizer)}.",
        f"- Verification: {verification_note(recognizer)}.",
        f"- {probability_note(recognizer)}.",
        f"\n### The model's {len(recognizer.speakers)} speakers",
    ]
    lines += [f"- **{source or 'speakers'}**: {', '.join(names)}"
              for source, names in speakers_by_source(recognizer.speakers).items()]
    return "\n".join(lines)


def diarization(result) -> str:
    """The summary of a Diarization: how many speakers, each one's speech and whether they were named."""
    from .segments import clock

    count = len(result.speakers)
    lines = [f"**{count} speaker{'s' * (count != 1)}** in {clock(result.duration)} of audio, "
             f"{len(result.segments)} segments:"]
    for speaker in result.speakers:
        answer = speaker.identification
        best = answer.best or (answer.matches[0] if answer.matches else None)
        how = (f"named: score {best.score:.3f}, threshold {answer.threshold:.3f}" if answer.best is not None
               else f"not named: the nearest, {markdown_text(display_name(best))}, scores {best.score:.3f} "
                    f"under the threshold {answer.threshold:.3f}" if best is not None else "not named")
        lines.append(f"- {markdown_text(speaker.name)}: {speaker.seconds:.1f} s of speech ({how})")
    return "\n".join(lines)
