"""The development speakers' clips a calibration or a benchmark uses: which speakers, which clips, and
what a model makes of them (features, the speech check, embeddings, seconds of speech).

`bench/dev_speakers.txt` lists the unseen development speakers as `SPLIT SOURCE/SPEAKER`; a
speaker's source is its name up to the first "/".
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from speaker_app.checkpoint import Checkpoint
from speaker_app.features import AudioError, features_from_file
from speaker_app.inference import infer
from speaker_app.speech import check_speech

from .data import DataError, load_features, read_speakers, read_test
from .prepare import find_clips


class Clips(NamedTuple):
    """Labelled clips and what the model makes of them."""
    speakers: list[str]  # (N,) speaker of each clip
    keys: list[str]  # (N,) path of each clip
    embeddings: torch.Tensor  # (N, E) unit embeddings
    speech: torch.Tensor  # (N,) bool: passed the speech check
    seconds: torch.Tensor | None = None  # (N,) seconds of speech (after silence removal)


def read_speaker_list(path: Path, split: str | None = None) -> list[str]:
    """Speaker folders from a list file: `SPEAKER` or `SPLIT SPEAKER` lines (bench/dev_speakers.txt);
    with `split`, only that split's speakers."""
    speakers = []
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if not fields or line.startswith("#"):
            continue
        if split is None or (len(fields) == 2 and fields[0] == split):
            speakers.append(fields[-1])
    if not speakers:
        raise SystemExit(f"error: {path} lists no speakers" + (f" in split {split!r}" if split else ""))
    return speakers


def audio_clips(root: Path, speakers: list[str] | None = None, include=(), exclude=(), max_clips: int | None = None,
                seed: int = 0) -> list[tuple[str, str]]:
    """[(speaker, clip path relative to root)] of the chosen speaker folders, at most max_clips each (seeded)."""
    include = list(include) + list(speakers or [])
    found = find_clips(root, include, exclude)
    if speakers:
        missing = sorted(set(speakers) - set(found))
        if missing:
            print(f"warning: {len(missing)} listed speakers have no clips under {root}, e.g. {missing[0]}",
                  file=sys.stderr)
    rows = []
    for speaker, clips in found.items():
        if max_clips and len(clips) > max_clips:
            clips = sorted(random.Random(f"{seed}/{speaker}").sample(clips, max_clips))
        rows += [(speaker, clip) for clip in clips]
    return rows


def embed_clips(checkpoint: Checkpoint, model, rows: list[tuple[str, str]], root: Path, device="cpu",
                progress: bool = True, what: str = "clips") -> Clips:
    """Features, speech check and embeddings of audio clips [(speaker, path under root)]; undecodable ones skipped."""
    kept, features = [], []
    for speaker, clip in tqdm(rows, desc=f"features of {what}", unit="clip", disable=not progress, leave=False):
        try:
            features.append(features_from_file(root / clip, checkpoint.feature_config))
        except AudioError as error:
            print(f"skipped {clip}: {error}", file=sys.stderr)
            continue
        kept.append((speaker, clip))
    return _embed(model, kept, features, device, checkpoint.feature_config.frame_seconds)


def _embed(model, rows, features, device, frame_seconds: float) -> Clips:
    if not rows:
        raise SystemExit("error: no usable clips")
    speech = torch.tensor([check_speech(f).speech for f in features])
    embeddings = infer(model.to(device), features, device=device).embeddings
    seconds = torch.tensor([len(f) for f in features]) * frame_seconds
    return Clips([s for s, _ in rows], [k for _, k in rows], embeddings, speech, seconds)


def known_clips(checkpoint: Checkpoint, model, known_data: Path | None, speech_dir: Path, device="cpu",
                progress: bool = True) -> Clips:
    """Held-out clips of the model's own speakers: --known-data's labelled test split, else the
    checkpoint's recorded held-out clips (paths relative to the speech folder)."""
    if known_data is not None:
        try:
            speakers = read_speakers(known_data)
            items = [u for u in read_test(known_data, speakers) if u.speaker >= 0]
            features = [load_features(known_data / u.path, checkpoint.feature_config.n_mels) for u in items]
        except DataError as error:
            raise SystemExit(f"error: {error}")
        rows = [(speakers[u.speaker], u.path) for u in items]
        return _embed(model, rows, features, device, checkpoint.feature_config.frame_seconds)
    held_out = checkpoint.info.get("training_data", {}).get("held_out_clips")
    if not held_out:
        raise SystemExit("error: the checkpoint records no held-out clips; give --known-data PREPARED_DIR")
    rows = [(clip.rsplit("/", 1)[0], clip) for clip in held_out]
    return embed_clips(checkpoint, model, rows, speech_dir, device, progress, "known held-out clips")
