"""Who spoke when, as segments: labelling speech from window labels, and the exchange formats (RTTM, CSV).

Times are seconds as floats. RTTM is NIST's Rich Transcription Time Marked format, one line per segment:

    SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>

A speaker name is one RTTM field, so its spaces are written as underscores ("unknown 1" -> "unknown_1").
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

Span = tuple[float, float]  # (start, end) in seconds


class Segment(NamedTuple):
    start: float
    end: float
    speaker: str
    score: float = float("nan")  # the decision score of the speaker's cluster against the name it was given

    @property
    def duration(self) -> float:
        return self.end - self.start


def label_speech(regions: list[Span], windows: list[Span], labels: list[int]) -> list[tuple[float, float, int]]:
    """Speech regions and labelled windows -> (start, end, label) pieces covering exactly the regions.

    Each moment of speech takes the label of the window whose centre is nearest (a window's share of a region
    ends halfway to the next window's centre); a region without a window of its own (too short to embed)
    takes the label of the nearest window in time. Adjacent pieces of one label are joined.
    """
    if len(windows) != len(labels):
        raise ValueError(f"{len(windows)} windows but {len(labels)} labels")
    if not windows:
        return []
    centres = np.array([(start + end) / 2 for start, end in windows])
    order = np.argsort(centres, kind="stable")
    centres, ordered = centres[order], [labels[i] for i in order]
    bounds = (centres[1:] + centres[:-1]) / 2  # where one window's share ends and the next one's begins
    pieces = []
    for start, end in regions:
        first, last = np.searchsorted(bounds, [start, end])
        cuts = [start, *bounds[first:last].tolist(), end]
        for i, (a, b) in zip(range(first, last + 1), zip(cuts[:-1], cuts[1:])):
            if b > a:
                pieces.append((a, b, ordered[i]))
    return join_pieces(pieces)


def join_pieces(pieces: list[tuple[float, float, int]], gap: float = 0.0) -> list[tuple[float, float, int]]:
    """Consecutive pieces of one label at most `gap` seconds apart joined into one."""
    joined = []
    for start, end, label in sorted(pieces):
        if joined and joined[-1][2] == label and start - joined[-1][1] <= gap + 1e-9:
            joined[-1] = (joined[-1][0], max(end, joined[-1][1]), label)
        else:
            joined.append((start, end, label))
    return joined


def rttm_name(speaker: str) -> str:
    """A speaker name as one RTTM field: whitespace becomes underscores; an empty name is refused."""
    field = "_".join(str(speaker).split())
    if not field:
        raise ValueError("a segment needs a speaker name")
    return field


def rttm_lines(segments: list[Segment], file_id: str) -> list[str]:
    """Segments -> RTTM lines (start and duration to the millisecond)."""
    uri = rttm_name(file_id)
    return [f"SPEAKER {uri} 1 {s.start:.3f} {s.duration:.3f} <NA> <NA> {rttm_name(s.speaker)} <NA> <NA>"
            for s in segments]


def write_rttm(segments: list[Segment], file_id: str, path: str | Path) -> Path:
    path = Path(path)
    path.write_text("".join(line + "\n" for line in rttm_lines(segments, file_id)))
    return path


def read_rttm(path_or_text: str | Path) -> dict[str, list[Segment]]:
    """An RTTM file (or its text) -> {file id: segments}; ValueError naming the line that is not RTTM."""
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    files: dict[str, list[Segment]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue  # blank lines and other RTTM record types
        try:
            if len(fields) < 8:
                raise ValueError("fewer than 8 fields")
            start, duration = float(fields[3]), float(fields[4])
            if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration < 0:
                raise ValueError("start and duration must be finite and not negative")
        except ValueError as error:
            raise ValueError(f"line {number} is not an RTTM SPEAKER line ({error}): {line!r}") from None
        files.setdefault(fields[1], []).append(Segment(start, start + duration, fields[7]))
    return files


def csv_text(segments: list[Segment]) -> str:
    """Segments -> CSV with a header: start, end, speaker, score (seconds to the millisecond)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["start", "end", "speaker", "score"])
    for s in segments:
        writer.writerow([f"{s.start:.3f}", f"{s.end:.3f}", s.speaker, "" if math.isnan(s.score) else f"{s.score:.3f}"])
    return out.getvalue()


def clock(seconds: float) -> str:
    """Seconds -> m:ss.s, or h:mm:ss.s from an hour on."""
    minutes, rest = divmod(max(0.0, seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:04.1f}" if hours else f"{minutes}:{rest:04.1f}"
