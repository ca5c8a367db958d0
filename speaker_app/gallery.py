"""Enrolled speakers on disk: one JSON file of unit embeddings, written atomically.

The gallery belongs to one model (embeddings of another model mean nothing),
so it records the checkpoint's fingerprint and refuses to mix.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import torch

from .checkpoint import atomic_write

MAX_NAME = 64


def sanitise_name(name: str) -> str:
    """A display name safe anywhere: no path separators, control characters or leading dots."""
    name = re.sub(r"[\x00-\x1f\x7f/\\]+", " ", str(name))
    name = re.sub(r"\s+", " ", name).strip().lstrip(". ")
    if not name:
        raise ValueError("a speaker name needs at least one visible character")
    if len(name) > MAX_NAME:
        raise ValueError(f"a speaker name may have at most {MAX_NAME} characters, got {len(name)}")
    return name


class Gallery:
    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        self._speakers: dict[str, dict] = {}
        if self.path.exists():
            self._speakers = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"gallery {self.path} is unreadable: {error}") from None
        if data.get("model") != self.fingerprint:
            raise ValueError(f"gallery {self.path} was made with another model; "
                             "move it away or choose another gallery folder")
        return data.get("speakers", {})

    def _write(self, speakers: dict[str, dict]):
        """Write `speakers` and only then hold them: a failed write leaves file and memory as they were."""
        data = {"model": self.fingerprint, "speakers": speakers}
        atomic_write(self.path, lambda handle: handle.write(json.dumps(data, indent=1).encode()))
        self._speakers = speakers

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._speakers)

    def embeddings(self) -> tuple[list[str], torch.Tensor | None]:
        """Names and their (N, E) unit embeddings."""
        with self._lock:
            names = sorted(self._speakers)
            if not names:
                return [], None
            return names, torch.tensor([self._speakers[n]["embedding"] for n in names])

    def add(self, name: str, embedding: torch.Tensor, clips: int) -> str:
        name = sanitise_name(name)
        entry = {"embedding": [round(float(v), 6) for v in embedding], "clips": clips,
                 "enrolled": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with self._lock:
            self._write({**self._speakers, name: entry})
        return name

    def remove(self, name: str) -> bool:
        with self._lock:
            if name not in self._speakers:
                return False
            self._write({n: s for n, s in self._speakers.items() if n != name})
            return True

    def info(self) -> list[tuple[str, int, str]]:
        with self._lock:
            return [(n, s["clips"], s["enrolled"]) for n, s in sorted(self._speakers.items())]
