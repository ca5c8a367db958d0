"""A facade for programs and the app: identify, embed, enroll, verify, explain.

    recognizer = Recognizer.from_checkpoint("checkpoints/speaker-conformer.pt")
    result = recognizer.identify("clip.wav", top_k=5)

A source is an audio file (any common format, rate and channel count), a
feature file (`.pt` holding a (T, 40) float tensor, or `.npy`), a
`(rate, samples)` pair as Gradio's audio component gives, or a (T, 40) tensor.
Bad input raises `InputError` with a message meant for the user.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import Checkpoint, load_checkpoint
from .features import AudioError, features_from_array, read_audio
from .gallery import Gallery, sanitise_name
from .inference import CHUNK_FRAMES, infer
from .scoring import centroid, cosine

FEATURE_SUFFIXES = (".pt", ".npy")
MIN_AUDIO_SECONDS = 0.3
MIN_FRAMES = 10  # 0.1 s of speech after silence removal
MAX_AUDIO_SECONDS = 600.0  # longer audio is cut here (bounded memory), and said so
DEFAULT_THRESHOLD = 0.5


class InputError(ValueError):
    """Input the recognizer cannot use; the message says why, for the user."""


class Match(NamedTuple):
    name: str
    probability: float
    score: float  # cosine similarity to the speaker's prototype or enrollment
    enrolled: bool


@dataclass
class Identification:
    matches: list[Match]  # top-k, best first
    best: Match | None  # the closest speaker by cosine, None when below the threshold
    threshold: float
    seconds: float  # speech analysed (after silence removal)
    notes: list[str]


@dataclass
class Explanation:
    features: torch.Tensor  # (T, n_mels) the frames shown
    attention: list[torch.Tensor]  # per layer (H, T', T')
    pooling: torch.Tensor  # (T',)
    frame_seconds: float  # seconds per encoder frame
    truncated: bool


@dataclass
class Verification:
    score: float
    same: bool
    threshold: float


def fingerprint(checkpoint: Checkpoint) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(checkpoint.state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Recognizer:
    def __init__(self, checkpoint: Checkpoint, gallery_path: str | Path | None = None):
        self.checkpoint = checkpoint
        self.model = checkpoint.build_model()
        self.features_config = checkpoint.feature_config
        calibration = checkpoint.info.get("calibration", {})
        self.threshold = float(calibration.get("threshold", DEFAULT_THRESHOLD))
        self.calibration = calibration
        self.gallery = Gallery(gallery_path, fingerprint(checkpoint)) if gallery_path else None
        head_weight = getattr(self.model.head, "weight", None)
        # AM-softmax class vectors live in the embedding space: they are the known speakers' prototypes.
        self.prototypes = F.normalize(head_weight.detach(), dim=-1) if head_weight is not None else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, gallery_path: str | Path | None = None) -> Recognizer:
        return cls(load_checkpoint(path), gallery_path)

    @property
    def speakers(self) -> list[str]:
        return self.checkpoint.speakers

    # -- input -------------------------------------------------------------------------------
    def features(self, source) -> tuple[torch.Tensor, list[str]]:
        """Any source -> (T, n_mels) features and notes for the user (e.g. 'cut to 10 min')."""
        notes = []
        if isinstance(source, torch.Tensor):
            features = self._check_features(source, "features")
        elif isinstance(source, tuple) and len(source) == 2:
            rate, samples = source
            samples = np.asarray(samples)
            if not isinstance(rate, (int, np.integer)) or rate <= 0:
                raise InputError(f"the recording has no valid sample rate: {rate!r}")
            if samples.ndim not in (1, 2):
                raise InputError(f"the recording must be (samples,) or (samples, channels), got shape {samples.shape}")
            self._check_duration(len(samples) / rate, "the recording")
            if len(samples) > MAX_AUDIO_SECONDS * rate:
                samples = samples[: int(MAX_AUDIO_SECONDS * rate)]
                notes.append(f"only the first {MAX_AUDIO_SECONDS / 60:g} minutes were analysed")
            features = self._audio(lambda: features_from_array(samples, rate, self.features_config))
        else:
            path = Path(source)
            if not path.is_file():
                raise InputError(f"no such file: {path.name}")
            if path.stat().st_size == 0:
                raise InputError(f"{path.name} is empty")
            if path.suffix.lower() in FEATURE_SUFFIXES:
                features = self._check_features(self._load_feature_file(path), path.name)
            else:
                features, notes = self._audio_file(path)
        if len(features) < MIN_FRAMES:
            raise InputError(f"too little speech: {len(features)} frames; need at least {MIN_FRAMES} (0.1 s)")
        return features, notes

    def _audio(self, make):
        try:
            return make()
        except AudioError as error:
            raise InputError(str(error)) from None

    def _audio_file(self, path: Path):
        wave = self._audio(lambda: read_audio(path, self.features_config.sample_rate, MAX_AUDIO_SECONDS + 1))
        seconds = len(wave) / self.features_config.sample_rate
        self._check_duration(seconds, path.name)
        notes = []
        if seconds > MAX_AUDIO_SECONDS:
            wave = wave[: int(MAX_AUDIO_SECONDS * self.features_config.sample_rate)]
            notes.append(f"only the first {MAX_AUDIO_SECONDS / 60:g} minutes were analysed")
        rate = self.features_config.sample_rate
        return self._audio(lambda: features_from_array(wave, rate, self.features_config)), notes

    @staticmethod
    def _check_duration(seconds: float, name: str):
        if seconds < MIN_AUDIO_SECONDS:
            raise InputError(f"{name} is too short: {seconds:.2f} s; record at least {MIN_AUDIO_SECONDS} s")

    @staticmethod
    def _load_feature_file(path: Path):
        try:
            if path.suffix.lower() == ".npy":
                return torch.from_numpy(np.load(path, allow_pickle=False))
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            reason = str(error).splitlines()[0][:200] if str(error) else "it is empty or cut short"
            if "Unsupported global" in str(error):
                reason = "it holds Python objects, not just a tensor (refused: loading it could run code)"
            elif "weights_only" in str(error):  # torch's text here is about unsafe loading: the bytes are no pickle
                reason = "it is damaged or not a tensor file"
            raise InputError(f"cannot read {path.name}: {reason}") from None

    def _check_features(self, features, name: str) -> torch.Tensor:
        n_mels = self.features_config.n_mels
        if not isinstance(features, torch.Tensor):
            raise InputError(f"{name} must hold a tensor, found {type(features).__name__}")
        if features.dim() != 2:
            raise InputError(f"{name} must be a 2-D (T, {n_mels}) tensor, got shape {tuple(features.shape)}")
        if features.shape[1] != n_mels:
            hint = " (it looks transposed: save features.T)" if features.shape[0] == n_mels else ""
            raise InputError(f"{name} must have {n_mels} mel bins per frame (T, {n_mels}), "
                             f"got shape {tuple(features.shape)}{hint}")
        if not features.dtype.is_floating_point:
            raise InputError(f"{name} must hold floating-point log-mel values, got {features.dtype}")
        if not torch.isfinite(features).all():
            raise InputError(f"{name} contains NaN or infinite values")
        return features.float()

    # -- inference ---------------------------------------------------------------------------
    def embed(self, source) -> torch.Tensor:
        """A unit-norm (E,) embedding."""
        features, _ = self.features(source)
        return infer(self.model, [features]).embeddings[0]

    def identify(self, source, top_k: int = 5) -> Identification:
        features, notes = self.features(source)
        outputs = infer(self.model, [features])
        embedding = outputs.embeddings[0]
        names, enrolled = self._enrolled()
        logits = outputs.logits[0]
        scores = cosine(embedding[None], self.prototypes)[0] if self.prototypes is not None else None
        if enrolled is not None:
            enrolled_scores = cosine(embedding[None], enrolled)[0]
            # Enrolled speakers compete as if they were classes of the margin head: s * cos.
            scale = getattr(self.model.head, "scale", 1.0)
            logits = torch.cat([logits, scale * enrolled_scores])
            scores = torch.cat([scores, enrolled_scores]) if scores is not None else enrolled_scores
        all_names = self.speakers + names
        probabilities = logits.softmax(-1)
        order = probabilities.argsort(descending=True)[: max(1, top_k)].tolist()

        def match(i):
            score = float(scores[i]) if scores is not None else float("nan")
            return Match(all_names[i], float(probabilities[i]), score, i >= len(self.speakers))

        best = None
        if scores is not None:
            nearest = match(int(scores.argmax()))
            best = nearest if nearest.score >= self.threshold else None
        seconds = len(features) * self.features_config.frame_seconds
        return Identification([match(i) for i in order], best, self.threshold, seconds, notes)

    def explain(self, source, max_frames: int = CHUNK_FRAMES // 2) -> Explanation:
        """Attention maps and pooling weights of the first `max_frames` frames (15 s by default)."""
        features, _ = self.features(source)
        shown = features[:max_frames]
        with torch.no_grad():
            out = self.model.forward_intermediates(shown[None], torch.tensor([len(shown)]))
        step = out.frame_step * self.features_config.frame_seconds
        return Explanation(shown, [a[0] for a in out.attention], out.pooling[0], step, len(features) > max_frames)

    def verify(self, first, second) -> Verification:
        score = float(cosine(self.embed(first)[None], self.embed(second)[None])[0, 0])
        return Verification(score, score >= self.threshold, self.threshold)

    # -- enrollment --------------------------------------------------------------------------
    def _enrolled(self):
        if self.gallery is None:
            return [], None
        return self.gallery.embeddings()

    def enroll(self, name: str, sources: list) -> str:
        """Store the mean embedding of 1-5 clips under `name`; returns the stored (sanitised) name."""
        if self.gallery is None:
            raise InputError("this recognizer has no gallery to enroll into")
        sources = [s for s in sources if s is not None]
        if not 1 <= len(sources) <= 5:
            raise InputError(f"enroll with one to five clips, got {len(sources)}")
        try:
            clean = sanitise_name(name)
        except ValueError as error:
            raise InputError(str(error)) from None
        if clean in {sanitise_name(s) for s in self.speakers}:
            raise InputError(f"{clean!r} is already one of the model's speakers; choose another name")
        embeddings = torch.stack([self.embed(s) for s in sources])
        return self.gallery.add(clean, centroid(embeddings), len(sources))

    def forget(self, name: str) -> bool:
        return self.gallery is not None and self.gallery.remove(name)
