"""New voices: enroll-5 identification and open-set decisions on speakers a model never trained on.

The protocol that `python -m bench.new_voices` runs and reports, beside a pretrained peer:

1. Enroll-5, per source and over all sources: every speaker with 6 or more clips is
   enrolled from its first 5 (by name); the rest are identified among the enrolled
   speakers of the group (top-1), and every clip-vs-speaker score is a trial for the
   EER and minDCF (p_target 0.01).
2. Open set at the checkpoint's shipped decisions (speaker_app.recognizer, exactly as
   the app decides): the share of the unseen speakers' clips named as one of the
   model's speakers; the share of the model's speakers' held-out clips
   (`info["training_data"]["held_out_clips"]`) named correctly; then the same with
   every enrollable unseen speaker enrolled from 5 clips: their other clips named
   correctly, and the clips of the unseen speakers too few to enroll named as anyone;
   and four inputs that are not speech.

`paired_top1` compares two models' enroll-5 top-1 on the same clips, with an interval
that treats speakers, not clips, as the independent draws.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from speaker_app.checkpoint import Checkpoint
from speaker_app.features import AudioError, FeatureConfig, features_from_file
from speaker_app.inference import infer
from speaker_app.recognizer import Recognizer
from speaker_app.scoring import Scorer, centroid
from speaker_app.speech import check_speech

from .data import source_of
from .evaluate import enrollment, enrollment_trials

ENROLL = 5


class Clip(NamedTuple):
    speaker: str
    path: str  # relative to its root


class Embedded(NamedTuple):
    embeddings: torch.Tensor  # (N, E) unit
    logits: torch.Tensor | None  # (N, C) for models of this project
    features: list[torch.Tensor]  # (T_i, n_mels) each


# -- embeddings ----------------------------------------------------------------------------------
def features_of(clips: list[Clip], root: Path, config: FeatureConfig) -> list[torch.Tensor | None]:
    out = []
    for clip in clips:
        try:
            out.append(features_from_file(root / clip.path, config))
        except AudioError as error:
            print(f"skipped {clip.path}: {error}", file=sys.stderr)
            out.append(None)
    return out


def decoded(clips: list[Clip], root: Path, config: FeatureConfig) -> tuple[list[Clip], list[torch.Tensor], int]:
    """The clips that decode, their features, and how many did not."""
    features = features_of(clips, root, config)
    kept = [(c, f) for c, f in zip(clips, features) if f is not None]
    return [c for c, _ in kept], [f for _, f in kept], len(clips) - len(kept)


def embed_ours(checkpoint: Checkpoint, features: list[torch.Tensor]) -> Embedded:
    if not features:  # e.g. a training checkpoint that lists no held-out clips of its known speakers
        return Embedded(torch.zeros(0, 0), torch.zeros(0, len(checkpoint.speakers)), [])
    outputs = infer(checkpoint.build_model(), features)
    return Embedded(outputs.embeddings, outputs.logits, features)


def resemblyzer_embeddings(clips: list[Clip], root: Path, cache: Path | None = None) -> torch.Tensor:
    """(N, 256) embeddings of the peer, Resemblyzer (pretrained GE2E; a bench-only dependency, never used
    to train ours), with the package's own preprocessing (16 kHz, volume, VAD trimming). They depend only
    on the clips, so `cache` keeps them for the next run (an hour of CPU for ~2,700 clips)."""
    import librosa
    from resemblyzer import VoiceEncoder, preprocess_wav

    key = hashlib.sha1("\n".join([str(root.resolve()), *(c.path for c in clips)]).encode()).hexdigest()[:16]
    cached = cache / f"resemblyzer-{key}.pt" if cache else None
    if cached and cached.is_file():
        return torch.load(cached, weights_only=True)

    encoder = VoiceEncoder("cpu", verbose=False)
    rows = []
    for clip in clips:
        wave = preprocess_wav(root / clip.path)
        if len(wave) < 1600:  # the VAD kept under 0.1 s: use the whole clip
            wave, _ = librosa.load(root / clip.path, sr=16000)
        rows.append(torch.from_numpy(encoder.embed_utterance(wave)))
    embeddings = torch.nn.functional.normalize(torch.stack(rows), dim=-1)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(embeddings, cached)
    return embeddings


# -- 1. enroll-5 ---------------------------------------------------------------------------------
def enroll_by_source(clips: list[Clip], embeddings: torch.Tensor, scorer=None) -> dict[str, dict]:
    """{source or "all": training.evaluate.enrollment's result} for groups with 2+ enrollable speakers."""
    groups = defaultdict(list)
    for i, clip in enumerate(clips):
        groups[source_of(clip.speaker)].append(i)
    groups["all"] = list(range(len(clips)))
    results = {}
    for group, rows in sorted(groups.items()):
        names, keys = [clips[i].speaker for i in rows], [clips[i].path for i in rows]
        counts = defaultdict(int)
        for name in names:
            counts[name] += 1
        if sum(n > ENROLL for n in counts.values()) >= 2:
            results[group] = enrollment(names, keys, embeddings[rows], ENROLL, scorer)
    return results


def paired_top1(clips: list[Clip], ours: torch.Tensor, peer: torch.Tensor, scorer: Scorer | None = None,
                draws: int = 2000, seed: int = 0) -> dict:
    """Enroll-5 top-1 over all `clips` of two models' embeddings of them (ours scored by `scorer` when
    given), paired clip by clip: the difference (ours minus peer), its 95 % interval from `draws`
    resamplings of the enrolled speakers with replacement (one speaker's clips are not independent
    trials), and how many clips only one of the two names right."""
    names, keys = [clip.speaker for clip in clips], [clip.path for clip in clips]
    (ours_scores, labels, enrolled), (peer_scores, _, _) = (
        enrollment_trials(names, keys, embeddings, ENROLL, score) for embeddings, score in ((ours, scorer), (peer, None)))
    ours_right, peer_right = ours_scores.argmax(-1) == labels, peer_scores.argmax(-1) == labels
    per_speaker = torch.zeros(len(enrolled), 3, dtype=torch.float64)  # clips, ours right, peer right
    per_speaker.index_add_(0, labels, torch.stack([torch.ones_like(ours_right), ours_right, peer_right], 1).double())
    drawn = torch.randint(len(enrolled), (draws, len(enrolled)), generator=torch.Generator().manual_seed(seed))
    total, ours_total, peer_total = per_speaker[drawn].sum(1).unbind(-1)
    low, high = torch.quantile((ours_total - peer_total) / total, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"difference": (ours_right.double().mean() - peer_right.double().mean()).item(), "interval": (low, high),
            "ours_only": int((ours_right & ~peer_right).sum()), "peer_only": int((peer_right & ~ours_right).sum()),
            "clips": len(labels), "speakers": len(enrolled), "draws": draws}


# -- 2. open set ---------------------------------------------------------------------------------
def answers(recognizer: Recognizer, embedded: Embedded) -> list:
    """The app's Identification of each clip."""
    frame_seconds = recognizer.features_config.frame_seconds
    return [recognizer.decide(embedded.embeddings[i], embedded.logits[i], len(f) * frame_seconds, [], 5,
                              check_speech(f)) for i, f in enumerate(embedded.features)]


def rate_by_source(speakers: list[str], hits: list[bool]) -> dict[str, tuple[float, int]]:
    """{source or "all": (share of hits, clips)}."""
    groups = defaultdict(list)
    for speaker, hit in zip(speakers, hits):
        groups[source_of(speaker)].append(hit)
        groups["all"].append(hit)
    return {g: (sum(h) / len(h), len(h)) for g, h in sorted(groups.items())}


def non_speech_inputs(recognizer: Recognizer) -> dict[str, str]:
    """What the app answers to a 1 kHz sine, white noise, a constant and a random (T, 40) tensor."""
    t = np.arange(48000) / 16000
    inputs = {"1 kHz sine": (16000, (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)),
              "white noise": (16000, (0.3 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)),
              "constant (300, 40) tensor": torch.full((300, 40), -5.0),
              "random (300, 40) tensor": torch.randn(300, 40, generator=torch.Generator().manual_seed(0)) * 3 - 5}
    said = {}
    for name, source in inputs.items():
        result = recognizer.identify(source)
        said[name] = ("no speech" if not result.speech else "unknown" if result.best is None
                      else f"named {result.best.name}")
    return said


def open_set(checkpoint: Checkpoint, unseen: list[Clip], unseen_embedded: Embedded, known: list[Clip],
             known_embedded: Embedded) -> dict:
    recognizer = Recognizer(checkpoint)
    result = {"unseen_named": rate_by_source([c.speaker for c in unseen],
                                             [a.best is not None for a in answers(recognizer, unseen_embedded)]),
              "known_correct": rate_by_source([c.speaker for c in known],
                                              [a.best is not None and a.best.name == c.speaker
                                               for a, c in zip(answers(recognizer, known_embedded), known)]),
              "non_speech": non_speech_inputs(recognizer)}
    with tempfile.TemporaryDirectory() as folder:
        recognizer = Recognizer(checkpoint, Path(folder) / "gallery.json")
        by_speaker = defaultdict(list)
        for i, clip in enumerate(unseen):
            by_speaker[clip.speaker].append(i)
        enrolled, targets, strangers = {}, [], []
        for speaker, rows in sorted(by_speaker.items()):
            rows = sorted(rows, key=lambda i: unseen[i].path)
            if len(rows) > ENROLL:
                clips = unseen_embedded.embeddings[rows[:ENROLL]]
                enrolled[speaker] = recognizer.gallery.add(speaker, centroid(clips), ENROLL, clip_embeddings=clips)
                targets += rows[ENROLL:]
            else:
                strangers += rows
        said = answers(recognizer, unseen_embedded)
        result["enrolled"] = len(enrolled)
        result["enrolled_correct"] = rate_by_source(
            [unseen[i].speaker for i in targets],
            [said[i].best is not None and said[i].best.name == enrolled[unseen[i].speaker] for i in targets])
        result["strangers_named"] = rate_by_source([unseen[i].speaker for i in strangers],
                                                   [said[i].best is not None for i in strangers])
        result["known_correct_with_enrolled"] = rate_by_source(
            [c.speaker for c in known], [a.best is not None and a.best.name == c.speaker
                                         for a, c in zip(answers(recognizer, known_embedded), known)])
    return result


# -- both ------------------------------------------------------------------------------------------
class Measured(NamedTuple):
    tables: dict[str, dict]  # {model: enroll_by_source's result}
    open_set: dict  # open_set's result for the checkpoint
    counts: dict  # speakers, clips and undecodable clips ("skipped") of the unseen; the known's held-out clips
    unseen: list[Clip]  # the unseen speakers' clips that decode
    embeddings: torch.Tensor  # the checkpoint's unit embeddings of them
    scorer: Scorer | None  # the checkpoint's scorer when it carries a cohort (AS-norm), else None (cosine)


def measure(checkpoint: Checkpoint, unseen: list[Clip], audio_dir: Path, speech_dir: Path,
            others: dict[str, Checkpoint] | None = None) -> Measured:
    """Enroll-5 for the checkpoint (cosine, and AS-norm when it carries a cohort) and each of `others`,
    on `unseen` clips under `audio_dir`; the open set at the checkpoint's decisions, its known speakers'
    held-out clips under `speech_dir`."""
    unseen, features, skipped = decoded(unseen, audio_dir, checkpoint.feature_config)
    held_out = checkpoint.info.get("training_data", {}).get("held_out_clips", [])
    known, known_features, _ = decoded([Clip(c.rsplit("/", 1)[0], c) for c in held_out], speech_dir,
                                       checkpoint.feature_config)
    ours = embed_ours(checkpoint, features)
    tables = {"ours (cosine)": enroll_by_source(unseen, ours.embeddings)}
    scorer = Recognizer(checkpoint).scorer
    scorer = scorer if scorer.cohort is not None else None
    if scorer is not None:
        tables["ours (AS-norm)"] = enroll_by_source(unseen, ours.embeddings, scorer)
    for name, other in (others or {}).items():
        other_features = features if other.feature_config == checkpoint.feature_config else \
            features_of(unseen, audio_dir, other.feature_config)
        tables[name] = enroll_by_source(unseen, embed_ours(other, other_features).embeddings)
    result = open_set(checkpoint, unseen, ours, known, embed_ours(checkpoint, known_features))
    counts = {"speakers": len({c.speaker for c in unseen}), "clips": len(unseen), "skipped": skipped,
              "known": len(known)}
    return Measured(tables, result, counts, unseen, ours.embeddings, scorer)
