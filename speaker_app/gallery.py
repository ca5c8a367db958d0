"""Enrolled speakers: unit embeddings under display names, in one JSON file per model or in memory.

Each speaker is stored as the mean direction of their enrollment clips, each
clip's own embedding (for score normalisation; an entry from before clips were
kept counts its mean as its one clip) and the seconds of speech they held (the
identification threshold depends on it; an entry from before counts as unknown).

The gallery belongs to one model (embeddings of another model mean nothing),
so it records the checkpoint's fingerprint and refuses to mix. On disk it is
written atomically, readable by its owner only (0600), with the previous
version kept as `<file>.prev` (after a deletion, the same as the file: a deleted
speaker leaves no copy): a damaged file gives way to that copy, and
entries that cannot be scored (a wrong size, a non-finite value, a name that
is no longer valid) are set aside in `<file>.quarantine.json`, each named.
Without a path the gallery lives in memory only: one visitor's, gone with the session.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import unicodedata
from pathlib import Path
from typing import NamedTuple

import torch

from .files import atomic_write, previous_path

MAX_NAME = 64


def sanitise_name(name: str) -> str:
    """A display name safe anywhere: NFKC-normalised, no path separators, control characters or
    leading dots; invisible format characters (zero-width, bidirectional controls) are refused."""
    name = unicodedata.normalize("NFKC", str(name))
    hidden = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) == "Cf"})
    if hidden:
        raise ValueError("a speaker name may not hold invisible formatting characters (zero-width or text-direction "
                         f"marks): {', '.join(hidden)}")
    name = "".join(" " if unicodedata.category(c) == "Cc" or c in "/\\" else c for c in name)
    name = re.sub(r"\s+", " ", name).strip().lstrip(". ")
    if not name:
        raise ValueError("a speaker name needs at least one visible character")
    if len(name) > MAX_NAME:
        raise ValueError(f"a speaker name may have at most {MAX_NAME} characters, got {len(name)}")
    return name


def name_key(name: str) -> str:
    """What makes two names the same speaker: the sanitised name without case or spaces."""
    return re.sub(r"\s", "", sanitise_name(name).casefold())


class Enrolled(NamedTuple):
    names: list[str]  # sorted
    embeddings: torch.Tensor | None  # (N, E) unit: each speaker's voiceprint; None when nobody is enrolled
    clips: torch.Tensor | None  # (G, E) unit: the enrollment clips
    owners: torch.Tensor | None  # (G,) long: the row of `names` each clip belongs to
    seconds: torch.Tensor | None = None  # (N,) seconds of speech each speaker was enrolled from; NaN: not recorded


class NameTaken(ValueError):
    """The name, up to case and spaces, is enrolled already; `name` is the stored one."""

    def __init__(self, name: str):
        super().__init__(f"{name!r} is already enrolled")
        self.name = name


class Gallery:
    def __init__(self, path: str | Path | None, fingerprint: str, dim: int | None = None):
        """path None: in memory only. dim: the model's embedding size, which every entry must have."""
        self.path = Path(path) if path else None
        self.fingerprint = fingerprint
        self.dim = dim
        self.notices: list[str] = []  # what opening it took: a previous copy used, entries set aside
        self._lock = threading.Lock()
        self._speakers: dict[str, dict] = {}
        self._tensors: Enrolled | None = None  # `enrolled()`, made again after each write
        if self.path is not None:
            self._speakers = self._open()

    # -- reading -----------------------------------------------------------------------------
    def _open(self) -> dict[str, dict]:
        backup = previous_path(self.path)
        if not self.path.exists() and not backup.exists():
            return {}
        try:
            data = self._read(self.path)
        except _Damaged as damage:
            data = self._recover(str(damage), backup)
        good, bad = self._sort_entries(data["speakers"])
        if bad:
            self._quarantine(data["speakers"], bad)
            self._write({name: data["speakers"][name] for name in good})
        return {name: data["speakers"][name] for name in good}

    def _read(self, path: Path) -> dict:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _Damaged(f"{path.name} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _Damaged(f"{path.name} is unreadable ({error})") from None
        if not isinstance(data, dict) or not isinstance(data.get("speakers"), dict):
            raise _Damaged(f"{path.name} is not a gallery (no speakers table)")
        if data.get("model") != self.fingerprint:
            raise ValueError(f"gallery {path} was made with another model; "
                             "move it away or choose another gallery folder")
        return data

    def _recover(self, damage: str, backup: Path) -> dict:
        """Start from the previous copy, and keep the damaged file aside; say so either way."""
        kept = self.path.with_name(self.path.name + ".damaged")
        if self.path.exists():
            self.path.replace(kept)
        try:
            data = self._read(backup)
        except _Damaged as second:
            self.notices.append(f"the gallery {damage}, and its previous copy {second}: starting with no enrolled "
                                f"speakers" + (f"; the damaged file is kept as {kept.name}" if kept.exists() else ""))
            return {"model": self.fingerprint, "speakers": {}}
        self.notices.append(f"the gallery {damage}: started from its previous copy {backup.name} "
                            f"({len(data['speakers'])} speakers)" + (f"; the damaged file is kept as {kept.name}"
                                                                     if kept.exists() else ""))
        self._write(data["speakers"], keep_previous=False)  # the previous copy stays as it is
        return data

    def _sort_entries(self, speakers: dict) -> tuple[list[str], dict[str, str]]:
        """Names whose entries can be used, and {name: why not} for the others."""
        good, bad, keys = [], {}, set()
        for name, entry in speakers.items():
            problem = self._entry_problem(name, entry)
            if problem is None and name_key(name) in keys:
                problem = "another entry has the same name up to case and spaces"
            if problem:
                bad[name] = problem
            else:
                good.append(name)
                keys.add(name_key(name))
        return good, bad

    def _entry_problem(self, name: str, entry) -> str | None:
        try:
            if sanitise_name(name) != name:
                return "the name is not valid as it stands"
        except ValueError as error:
            return str(error)
        if not isinstance(entry, dict) or not isinstance(entry.get("embedding"), list):
            return "it has no embedding"
        values = entry["embedding"]
        clips = entry.get("clip_embeddings", [])
        if not isinstance(clips, list) or not all(isinstance(c, list) for c in clips):
            return "its clip embeddings are not a list of embeddings"
        for vector in [values, *clips]:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
                return "its embedding holds non-numbers"
            try:
                check_embedding(torch.tensor(vector, dtype=torch.float64), self.dim)
            except ValueError as error:
                return str(error)
        if not isinstance(entry.get("clips"), int) or not isinstance(entry.get("enrolled"), str):
            return "its clip count or date is missing"
        seconds = entry.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not 0 < seconds < math.inf):
            return "its seconds of speech are not a positive number"
        return None

    def _quarantine(self, speakers: dict, bad: dict[str, str]) -> None:
        aside = self.path.with_name(self.path.name + ".quarantine.json")
        try:
            held = json.loads(aside.read_text(encoding="utf-8")) if aside.exists() else {}
            held = held if isinstance(held, dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            held = {}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        held.update({name: {"entry": speakers[name], "problem": why, "set_aside": stamp} for name, why in bad.items()})
        atomic_write(aside, lambda handle: handle.write(json.dumps(held, indent=1).encode()), mode=0o600)
        for name, why in bad.items():
            self.notices.append(f"enrolled speaker {name!r} was set aside ({why}); it is kept in {aside.name}")

    # -- writing -----------------------------------------------------------------------------
    def _write(self, speakers: dict[str, dict], keep_previous: bool = True):
        """Write `speakers` and only then hold them: a failed write leaves file and memory as they were."""
        if self.path is not None:
            data = {"model": self.fingerprint, "speakers": speakers}
            atomic_write(self.path, lambda handle: handle.write(json.dumps(data, indent=1).encode()),
                         keep_previous=keep_previous, mode=0o600)
        self._speakers = speakers
        self._tensors = None

    def _stored(self, name: str) -> str | None:
        key = name_key(name)
        return next((stored for stored in self._speakers if name_key(stored) == key), None)

    def find(self, name: str) -> str | None:
        """The enrolled name that `name` matches up to case and spaces, or None."""
        with self._lock:
            return self._stored(name)

    def add(self, name: str, embedding: torch.Tensor, clips: int, replace: bool = False,
            clip_embeddings: torch.Tensor | None = None, seconds: float | None = None) -> str:
        """Store a unit embedding under `name`, with the (clips, E) unit embeddings of its clips and the
        seconds of speech they held when given; NameTaken if the name is enrolled and not `replace`.

        The check and the write happen under one lock: of two enrollments of one name, one wins."""
        name = sanitise_name(name)
        check_embedding(embedding, self.dim)
        entry = {"embedding": _rounded(embedding), "clips": int(clips), "enrolled": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if clip_embeddings is not None:
            if len(clip_embeddings) != clips:
                raise ValueError(f"{clips} clips, but {len(clip_embeddings)} clip embeddings")
            for vector in clip_embeddings:
                check_embedding(vector, self.dim)
            entry["clip_embeddings"] = [_rounded(vector) for vector in clip_embeddings]
        if seconds is not None:
            if not 0 < seconds < math.inf:
                raise ValueError(f"seconds of speech must be positive, got {seconds}")
            entry["seconds"] = round(float(seconds), 3)
        with self._lock:
            stored = self._stored(name)
            if stored is not None and not replace:
                raise NameTaken(stored)
            self._write({**{n: s for n, s in self._speakers.items() if n != stored}, name: entry})
        return name

    def remove(self, name: str) -> str | None:
        """Delete the speaker `name` matches (up to case and spaces); the stored name, or None."""
        try:
            key = name_key(name)
        except ValueError:
            return None
        with self._lock:
            stored = next((n for n in self._speakers if name_key(n) == key), None)
            if stored is not None:
                remaining = {n: s for n, s in self._speakers.items() if n != stored}
                self._write(remaining)
                self._write(remaining)  # again, so the previous copy holds no trace of them either
            return stored

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._speakers)

    def enrolled(self) -> Enrolled:
        """The enrolled speakers' names, voiceprints and clips."""
        with self._lock:
            if self._tensors is None:
                self._tensors = _as_tensors(self._speakers)
            return self._tensors

    def info(self) -> list[tuple[str, int, str]]:
        with self._lock:
            return [(n, s["clips"], s["enrolled"]) for n, s in sorted(self._speakers.items())]


class _Damaged(Exception):
    pass


def _as_tensors(speakers: dict[str, dict]) -> Enrolled:
    names = sorted(speakers)
    if not names:
        return Enrolled([], None, None, None)
    entries = [speakers[n] for n in names]
    clips = [e.get("clip_embeddings") or [e["embedding"]] for e in entries]
    owners = torch.arange(len(names)).repeat_interleave(torch.tensor([len(c) for c in clips]))
    seconds = torch.tensor([float(e.get("seconds", math.nan)) for e in entries])
    return Enrolled(names, torch.tensor([e["embedding"] for e in entries]),
                    torch.tensor([vector for rows in clips for vector in rows]), owners, seconds)


def _rounded(embedding: torch.Tensor) -> list[float]:
    return [round(float(v), 6) for v in embedding]


def check_embedding(embedding: torch.Tensor, dim: int | None) -> None:
    """A voiceprint the gallery may hold: (dim,) finite values of unit norm. ValueError says what is wrong."""
    if embedding.dim() != 1 or (dim is not None and len(embedding) != dim):
        raise ValueError(f"its embedding has shape {tuple(embedding.shape)}; this model's have ({dim},)")
    if not torch.isfinite(embedding).all():
        raise ValueError("its embedding holds NaN or infinite values")
    norm = float(embedding.double().norm())
    if not math.isclose(norm, 1.0, abs_tol=1e-3):
        raise ValueError(f"its embedding has norm {norm:.3g}, not 1")
