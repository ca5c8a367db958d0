"""A facade for programs and the app: identify, embed, enroll, verify, explain.

    recognizer = Recognizer.from_checkpoint("checkpoints/speaker-conformer.pt")
    result = recognizer.identify("clip.wav", top_k=5)

A source is an audio file (any common format, rate and channel count), a
feature file (`.pt` holding a (T, 40) float tensor, or `.npy`), a
`(rate, samples)` pair as Gradio's audio component gives, or a (T, 40) tensor.
Bad input raises `InputError` with a message meant for the user.

Every use of the model goes through one `Batcher`: requests from several
threads that wait while the model is busy run together as one batch.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .batching import Batcher
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .checkpoint_format import hash_weights
from .decisions import Decisions
from .features import AudioError, FeatureError, check_features, features_from_array, read_audio
from .files import TensorFileError, load_tensor_file
from .gallery import Enrolled, Gallery, NameTaken, name_key, sanitise_name
from .inference import infer, infer_explained
from .onnx_model import served
from .scoring import centroid, cosine
from .speech import SpeechCheck, check_speech

FEATURE_SUFFIXES = (".pt", ".npy")
MIN_AUDIO_SECONDS = 0.3
MIN_FRAMES = 10  # 0.1 s of speech after silence removal
MAX_AUDIO_SECONDS = 600.0  # longer audio is cut here (bounded memory), and said so; longer feature files are refused
MAX_BATCH = 8  # requests the model runs together; their attention maps stay small (8 x 5 s: ~2 MB a layer)
# An explanation is kept per visitor (for the plots and the layer and head menus): its attention maps are
# stored over at most MAP_CELLS time spans a side, about what the heatmap shows (~420 pixels), in float16:
# at most 0.5 MB for 4 layers x 4 heads, whatever the length (15 s in full: 18 MB).
MAP_CELLS = 128
# A long enrollment recording ("read this paragraph") is cut into pieces of about this much speech, at most
# MAX_PIECES of them: the pieces are its clips, for score normalisation and for checking that they agree.
PIECE_SECONDS = 6.0
MAX_PIECES = 5


class InputError(ValueError):
    """Input the recognizer cannot use; the message says why, for the user."""


class Enrollment(NamedTuple):
    name: str  # as stored (sanitised)
    clips: int  # pieces embedded: each clip, a long recording cut into pieces
    seconds: float  # speech they held, after silence removal
    advice: list[str]  # for the person enrolling: too little speech, pieces that do not sound alike


class Candidates(NamedTuple):
    """Everyone a clip is compared with: the model's speakers, then the enrolled ones."""
    names: list[str]
    scores: torch.Tensor  # (N,) decision scores (AS-norm or cosine)
    cosines: torch.Tensor  # (N,)
    enrolled: list[bool]
    seconds: list[float]  # of enrollment speech; NaN for the model's speakers and for entries that did not record it


class Match(NamedTuple):
    name: str
    probability: float  # P(known) x the speaker's softmax share: the matches and `unknown` sum to at most 1
    score: float  # the decision score against the speaker's prototype or enrollment (AS-norm or cosine)
    enrolled: bool
    cosine: float = float("nan")  # the raw cosine similarity, whatever the decision score


@dataclass
class Identification:
    matches: list[Match]  # top-k, best first
    best: Match | None  # the best-scoring speaker, None ("unknown speaker") when below the threshold or no speech
    threshold: float  # the identification threshold the best speaker's score had to reach
    seconds: float  # speech analysed (after silence removal)
    notes: list[str]
    unknown: float = 1.0  # probability that the speaker is none of the known and enrolled speakers
    speech: bool = True  # False: the input does not look like speech, and no one is named
    score_kind: str = "cosine"  # "cosine" or "as-norm"
    margin: float = float("nan")  # the best score minus the threshold it had to reach (named when >= 0)


@dataclass
class Explanation:
    features: torch.Tensor  # (T, n_mels) the frames shown
    attention: list[torch.Tensor]  # per layer (H, N, N), float16: the (H, T', T') maps over N = min(T', MAP_CELLS) spans
    pooling: torch.Tensor  # (T',)
    frame_seconds: float  # seconds per encoder frame
    truncated: bool

    @property
    def seconds(self) -> float:
        """The time the maps and pooling weights cover."""
        return len(self.pooling) * self.frame_seconds


def shrink_map(maps: torch.Tensor, cells: int = MAP_CELLS) -> torch.Tensor:
    """(H, T', T') attention -> (H, N, N), N = min(T', cells): each query span's mean attention to each key
    span, so that every row still sums to about 1."""
    frames = maps.shape[-1]
    if frames <= cells:
        return maps
    return F.adaptive_avg_pool2d(maps.float(), cells) * (frames / cells)


@dataclass
class Verification:
    score: float  # the decision score (AS-norm or cosine)
    same: bool
    threshold: float  # the verification threshold on `score`
    cosine: float = float("nan")
    score_kind: str = "cosine"


def fingerprint(checkpoint: Checkpoint) -> str:
    """Which embeddings a model makes: its weights, and its embedding windows when it has them."""
    digest = hash_weights(hashlib.sha256(), checkpoint.state_dict)
    if checkpoint.model_config.window_frames:
        digest.update(f"window_frames={checkpoint.model_config.window_frames}".encode())
    return digest.hexdigest()[:16]


class Recognizer:
    def __init__(self, checkpoint: Checkpoint, gallery_path: str | Path | None = None):
        self.checkpoint = checkpoint
        self.model = served(checkpoint)
        self.features_config = checkpoint.feature_config
        self.calibration = checkpoint.info.get("calibration") or {}
        scale = float(getattr(self.model.head, "scale", 30.0))
        try:
            self.decisions = Decisions.from_calibration(self.calibration, checkpoint.cohort is not None, scale)
        except ValueError as error:
            raise CheckpointError(f"checkpoint's calibration is unusable: {error}") from None
        self.scorer = self.decisions.scorer(checkpoint.cohort)
        head_weight = getattr(self.model.head, "weight", None)
        # AM-softmax class vectors live in the embedding space: they are the known speakers' prototypes.
        self.prototypes = F.normalize(head_weight.detach(), dim=-1) if head_weight is not None else None
        self.max_frames = round(MAX_AUDIO_SECONDS / self.features_config.frame_seconds)
        self.batcher = Batcher(self._run_batch, MAX_BATCH)
        self.fingerprint = fingerprint(checkpoint)
        silence = torch.zeros(MIN_FRAMES, self.features_config.n_mels)
        self.embedding_dim = infer(self.model, [silence]).embeddings.shape[1]  # what gallery entries must have
        self.gallery = self.new_gallery(gallery_path) if gallery_path else None
        self._said = {}  # what the model said about itself; shared with with_gallery()'s views

    @classmethod
    def from_checkpoint(cls, path: str | Path, gallery_path: str | Path | None = None) -> Recognizer:
        return cls(load_checkpoint(path), gallery_path)

    @property
    def speakers(self) -> list[str]:
        return self.checkpoint.speakers

    @property
    def threshold(self) -> float:
        """The identification threshold (clip vs speaker)."""
        return self.decisions.identification.threshold

    @property
    def verification_threshold(self) -> float:
        """The verification threshold (clip vs clip)."""
        return self.decisions.verification.threshold

    @property
    def unexplained(self) -> str | None:
        """Why this model gives no attention maps or pooling weights (an ONNX export), once it said so."""
        return self._said.get("unexplained")

    def new_gallery(self, path: str | Path | None = None) -> Gallery:
        """A gallery for this model: on disk at `path`, or in memory (one visitor's) without one."""
        return Gallery(path, self.fingerprint, self.embedding_dim)

    def with_gallery(self, gallery: Gallery | None) -> Recognizer:
        """This recognizer (same model, same batcher) with another gallery: a visitor's own."""
        view = copy.copy(self)
        view.gallery = gallery
        return view

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

    def _load_feature_file(self, path: Path):
        """What a .pt or .npy file holds; its declared sizes are checked before anything is unpacked."""
        n_mels = self.features_config.n_mels
        try:
            # float64 is the widest dtype a feature file might use; anything bigger is not 10 minutes of features.
            return load_tensor_file(path, max_bytes=self.max_frames * n_mels * 8 + 2**20,
                                    max_elements=self.max_frames * n_mels)
        except TensorFileError as error:
            limit = (f" (feature files hold at most {MAX_AUDIO_SECONDS / 60:g} minutes: {self.max_frames:,} frames "
                     f"of {n_mels} values)") if error.kind == "size" else ""
            raise InputError(f"cannot read {path.name}: {error}{limit}") from None

    def _check_features(self, features, name: str) -> torch.Tensor:
        try:
            return check_features(features, self.features_config.n_mels, name, self.max_frames)
        except FeatureError as error:
            raise InputError(str(error)) from None

    # -- inference ---------------------------------------------------------------------------
    def _run_batch(self, jobs: list[tuple[torch.Tensor, bool]]) -> list[tuple]:
        """The batcher's work: (features, explain) jobs -> (unit embedding (E,), logits (C,), Inside or None)."""
        results = [None] * len(jobs)
        for explain in (True, False):
            chosen = [i for i, (_, wanted) in enumerate(jobs) if wanted == explain]
            if not chosen:
                continue
            utterances = [jobs[i][0] for i in chosen]
            if explain:
                try:
                    outputs, insides = infer_explained(self.model, utterances)
                except NotImplementedError as error:  # a model without intermediates (an ONNX export)
                    self._said["unexplained"] = str(error)
                    outputs, insides = infer(self.model, utterances), [None] * len(chosen)
            else:
                outputs, insides = infer(self.model, utterances), [None] * len(chosen)
            for row, i in enumerate(chosen):
                results[i] = (outputs.embeddings[row], outputs.logits[row], insides[row])
        return results

    def _outputs(self, features: torch.Tensor, explain: bool = False):
        """One utterance through the model, batched with whatever else is waiting for it."""
        embedding, logits, inside = self.batcher((features, explain))
        if not (torch.isfinite(embedding).all() and torch.isfinite(logits).all()):
            raise InputError("the model cannot score this input: its output is not finite")
        return embedding, logits, inside

    def embed(self, source) -> torch.Tensor:
        """A unit-norm (E,) embedding."""
        features, _ = self.features(source)
        return self._outputs(features)[0]

    def speech_embedding(self, source, what: str = "the clip") -> torch.Tensor:
        """A unit-norm (E,) embedding of a source that must hold speech; InputError if it does not."""
        return self._outputs(self.speech_features(source, what))[0]

    def identify(self, source, top_k: int = 5) -> Identification:
        return self._identify(source, top_k, explain=False)[0]

    def identify_explained(self, source, top_k: int = 5) -> tuple[Identification, Explanation]:
        """The identification and what the model looked at; one forward pass when the input is one piece (see
        infer_explained)."""
        return self._identify(source, top_k, explain=True)

    def explain(self, source) -> Explanation:
        """Attention maps and pooling weights of the first 15 s."""
        return self._identify(source, 1, explain=True)[1]

    def _identify(self, source, top_k: int, explain: bool) -> tuple[Identification, Explanation | None]:
        features, notes = self.features(source)
        embedding, logits, inside = self._outputs(features, explain)
        seconds = len(features) * self.features_config.frame_seconds
        result = self.decide(embedding, logits, seconds, notes, top_k, check_speech(features))
        if inside is None:
            if explain and self.unexplained:
                result.notes.append(self.unexplained)
            return result, None
        step = inside.frame_step * self.features_config.frame_seconds
        maps = [shrink_map(layer).half() for layer in inside.attention]
        return result, Explanation(features[: inside.frames], maps, inside.pooling, step,
                                   len(features) > inside.frames)

    def scores(self, embedding: torch.Tensor) -> Candidates | None:
        """(E,) unit embedding -> every candidate's decision score and cosine; None if there are no candidates.

        The known speakers are scored by prototype, the enrolled ones by voiceprint, all with one rule: the
        enrolled speakers' clips join the cohort of every trial but their own (`Scorer.score_speakers`)."""
        enrolled = self._enrolled()
        if self.prototypes is None and enrolled.embeddings is None:
            return None
        known = self.speakers if self.prototypes is not None else []
        candidates = torch.cat([c for c in (self.prototypes, enrolled.embeddings) if c is not None])
        owners = enrolled.owners + len(known) if enrolled.owners is not None else None
        scores = self.scorer.score_speakers(embedding[None], candidates, enrolled.clips, owners)[0]
        flags = [False] * len(known) + [True] * len(enrolled.names)
        seconds = [math.nan] * len(known) + (enrolled.seconds.tolist() if enrolled.seconds is not None
                                             else [math.nan] * len(enrolled.names))
        return Candidates(known + enrolled.names, scores, cosine(embedding[None], candidates)[0], flags, seconds)

    def decide(self, embedding: torch.Tensor, logits: torch.Tensor, seconds: float, notes: list[str],
               top_k: int = 5, speech: SpeechCheck | None = None, by_gallery_size: bool = True) -> Identification:
        """One clip's answer from its (E,) unit embedding, (C,) logits and seconds of speech.

        Each known speaker (by prototype) and each enrolled speaker (by the mean of
        their clips' embeddings) gets the decision score; the best is named when it
        reaches its threshold (a known speaker's, or an enrolled speaker's given the
        clip's and the enrollment's seconds of speech and, unless `by_gallery_size` is False, the gallery's
        size: `Rule.threshold_for`) and the
        input is speech. Probabilities: P(known) from the best score's distance to that
        threshold, shared among the speakers by a softmax at the fitted temperature;
        1 - P(known) is `unknown`.
        """
        notes = list(notes)
        is_speech = speech is None or speech.speech
        if not is_speech:
            notes.append(f"no speech found: {speech.reason}")
        scored = self.scores(embedding)
        if scored is None:  # a closed-set classifier (the course baseline) and nobody enrolled: its softmax, no verdict
            probabilities = logits.softmax(-1)
            order = probabilities.argsort(descending=True)[: max(1, top_k)].tolist()
            matches = [Match(self.speakers[i], float(probabilities[i]), float("nan"), False) for i in order]
            return Identification(matches, None, self.threshold, seconds, notes, 0.0, is_speech, self.scorer.kind)
        names, scores, cosines, flags, enrolled_seconds = scored
        best_index = int(scores.argmax())
        threshold = self.decisions.identification.threshold_for(flags[best_index], seconds,
                                                                enrolled_seconds[best_index],
                                                                sum(flags) if by_gallery_size else None)
        best_score = float(scores[best_index])
        p_known = self.decisions.p_known(best_score, threshold) if is_speech else 0.0
        probabilities = p_known * self.decisions.shares(scores)
        order = scores.argsort(descending=True)[: max(1, top_k)].tolist()

        def match(i):
            return Match(names[i], float(probabilities[i]), float(scores[i]), flags[i], float(cosines[i]))

        best = match(best_index) if is_speech and best_score >= threshold else None
        return Identification([match(i) for i in order], best, threshold, seconds, notes,
                              1.0 - p_known, is_speech, self.scorer.kind, best_score - threshold)

    def verify(self, first, second) -> Verification:
        """Same speaker or not, at the verification threshold; both clips must hold speech."""
        a = self.speech_embedding(first, "the first clip")[None]
        b = self.speech_embedding(second, "the second clip")[None]
        score = float(self.scorer.score(a, b)[0, 0])
        threshold = self.verification_threshold
        return Verification(score, score >= threshold, threshold, float(cosine(a, b)[0, 0]), self.scorer.kind)

    # -- enrollment --------------------------------------------------------------------------
    def _enrolled(self) -> Enrolled:
        return self.gallery.enrolled() if self.gallery is not None else Enrolled([], None, None, None)

    def enroll(self, name: str, sources: list, replace: bool = False) -> str:
        """Store the voiceprint of 1-5 clips under `name`; returns the stored (sanitised) name. See enroll_report."""
        return self.enroll_report(name, sources, replace).name

    def enroll_report(self, name: str, sources: list, replace: bool = False) -> Enrollment:
        """Store the mean embedding of 1-5 clips under `name`, with each clip's embedding and their seconds of
        speech; a clip longer than 2 x PIECE_SECONDS of speech is cut into pieces, each its own clip.

        A name already enrolled (up to case and spaces) raises InputError unless `replace`; of two
        enrollments of one name at the same time, one wins and the other is told the name is taken.
        The advice says when the speech is too little to be recognised reliably, and when a piece
        does not sound like the others (two people, or a noisy clip).
        """
        if self.gallery is None:
            raise InputError("this recognizer has no gallery to enroll into")
        sources = [s for s in sources if s is not None]
        if not 1 <= len(sources) <= 5:
            raise InputError(f"enroll with one to five clips, got {len(sources)}")
        try:
            clean = sanitise_name(name)
        except ValueError as error:
            raise InputError(str(error)) from None
        if name_key(clean) in {name_key(s) for s in self.speakers}:
            raise InputError(f"{clean!r} is already one of the model's speakers; choose another name")
        if not replace and (stored := self.gallery.find(clean)) is not None:
            raise InputError(_taken(stored))
        parts, labels = [], []
        for i, source in enumerate(sources):
            features = self.speech_features(source, f"clip {i + 1}")
            pieces = enrollment_pieces(features, round(PIECE_SECONDS / self.features_config.frame_seconds))
            parts += pieces
            labels += [f"clip {i + 1}" + (f" (part {j + 1})" if len(pieces) > 1 else "") for j in range(len(pieces))]
        embeddings = torch.stack([self._outputs(piece)[0] for piece in parts])
        seconds = sum(len(piece) for piece in parts) * self.features_config.frame_seconds
        try:
            stored = self.gallery.add(clean, centroid(embeddings), len(parts), replace=replace,
                                      clip_embeddings=embeddings, seconds=seconds)
        except NameTaken as taken:  # enrolled by someone else while these clips were embedded
            raise InputError(_taken(taken.name)) from None
        except ValueError as error:  # a voiceprint the gallery refuses (e.g. clips that cancel out)
            raise InputError(f"cannot enroll {clean!r}: {error}") from None
        return Enrollment(stored, len(parts), seconds, self.enrollment_advice(embeddings, labels, seconds))

    def speech_features(self, source, what: str = "the clip") -> torch.Tensor:
        """(T, n_mels) features of a source that must hold speech; InputError if it does not."""
        features, _ = self.features(source)
        check = check_speech(features)
        if not check.speech:
            raise InputError(f"{what} holds no speech: {check.reason}")
        return features

    def enrollment_advice(self, embeddings: torch.Tensor, labels: list[str], seconds: float) -> list[str]:
        """What to tell the person enrolling from (P, E) piece embeddings, their labels and seconds of speech."""
        advice = []
        rule = self.decisions.enrollment
        if seconds < rule.min_seconds:
            advice.append(f"only {seconds:.1f} s of speech: {rule.why_seconds} Record about "
                          f"{rule.min_seconds - seconds:.0f} s more, or add clips.")
        if len(embeddings) >= 2:
            agreement = leave_one_out(self.scorer, embeddings)
            odd = [label for label, score in zip(labels, agreement.tolist()) if score < rule.disagree_below]
            if odd:
                advice.append(f"{', '.join(odd)} {'does' if len(odd) == 1 else 'do'} not sound like the rest "
                              f"({rule.why_disagree}): if two people speak, enroll each on their own.")
        return advice

    def forget(self, name: str) -> str | None:
        """Delete an enrolled speaker (matched up to case and spaces); the name deleted, or None."""
        return self.gallery.remove(name) if self.gallery is not None else None


def enrollment_pieces(features: torch.Tensor, piece_frames: int, max_pieces: int = MAX_PIECES) -> list[torch.Tensor]:
    """(T, F) -> pieces of nearly equal length of about piece_frames (at most max_pieces); shorter than two
    pieces' worth, the whole."""
    count = min(max_pieces, len(features) // piece_frames)
    return list(torch.tensor_split(features, count)) if count >= 2 else [features]


def leave_one_out(scorer, embeddings: torch.Tensor) -> torch.Tensor:
    """(P, E) unit embeddings of one speaker's pieces -> (P,) each one's score against the mean of the others."""
    others = torch.stack([centroid(torch.cat([embeddings[:i], embeddings[i + 1:]])) for i in range(len(embeddings))])
    return scorer.score(embeddings, others).diagonal()


def _taken(name: str) -> str:
    return f"{name!r} is already enrolled; to replace that voiceprint, enroll again with replace chosen"
