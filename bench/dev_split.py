"""Choose the unseen development speakers of the many-speaker corpus, once, by a seeded rule.

    python -m bench.dev_split CORPUS_DIR [MORE_DIR] > bench/dev_speakers.txt

CORPUS_DIR is what ../shared/corpora/build.sh makes (SOURCE/SPEAKER/clips), MORE_DIR what
build_more.sh makes (telephone calls, accented and emotional speech, Common Voice English).
- One whole source is never trained on: `librispeech` (all its speakers go to the test half).
- Of every other source of CORPUS_DIR, a third of the speakers with at least 6 clips (enough to
  enroll 5 and test on the rest) and a tenth of those with fewer (impostor clips only) are held out.
- Of every source of MORE_DIR, the speakers that CORPUS_DIR does not hold are chosen the same way,
  with its own seed, except that 4 clips make a speaker enrollable (3 to enroll, 1 to test: most
  Speech Accent Archive speakers have 4 parts of one reading). The lines of CORPUS_DIR are those
  the script gave before MORE_DIR existed, so figures on them stay comparable.
- Held-out speakers alternate between `calibration` (thresholds and temperature are fitted on
  them) and `test` (figures are reported on them), so no figure comes from the speakers its
  threshold was fitted on.

Each output line is `SPLIT SOURCE/SPEAKER`. Training leaves out every listed speaker.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

UNSEEN_SOURCE = "librispeech"
ENROLLABLE = 6  # clips: 5 to enroll, at least 1 to test
MORE_ENROLLABLE = 4  # clips, for the sources of MORE_DIR: 3 to enroll, 1 to test
SEED = 0


def speaker_folders(source: Path) -> list[Path]:
    return sorted(p for p in source.iterdir() if p.is_dir())


def held_out(source: str, speakers: list[Path], enrollable: int, seed: str) -> list[tuple[str, str]]:
    """A third of the enrollable speakers and a tenth of the others, alternately calibration and test."""
    rng = random.Random(seed)
    rows = []
    for share, group in ((3, [s for s in speakers if len(list(s.iterdir())) >= enrollable]),
                         (10, [s for s in speakers if len(list(s.iterdir())) < enrollable])):
        rng.shuffle(group)
        held = sorted(group[:round(len(group) / share)])
        rows += [("calibration" if i % 2 == 0 else "test", f"{source}/{s.name}") for i, s in enumerate(held)]
    return rows


def dev_speakers(corpus: Path, more: Path | None = None) -> list[tuple[str, str]]:
    rows = []
    for source in sorted(p for p in corpus.iterdir() if p.is_dir()):
        if source.name == UNSEEN_SOURCE:
            rows += [("test", f"{source.name}/{s.name}") for s in speaker_folders(source)]
        else:
            rows += held_out(source.name, speaker_folders(source), ENROLLABLE, f"{SEED}/{source.name}")
    for source in sorted(p for p in more.iterdir() if p.is_dir()) if more else []:
        known = {s.name for s in speaker_folders(corpus / source.name)} if (corpus / source.name).is_dir() else set()
        new = [s for s in speaker_folders(source) if s.name not in known]
        rows += held_out(source.name, new, MORE_ENROLLABLE, f"{SEED}/more/{source.name}")
    return rows


def read_dev_speakers(path: Path) -> dict[str, list[str]]:
    """{split: [SOURCE/SPEAKER, ...]} from a file this script wrote."""
    splits: dict[str, list[str]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            split, speaker = line.split()
            splits.setdefault(split, []).append(speaker)
    return splits


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or not all(Path(a).is_dir() for a in argv):
        raise SystemExit("usage: python -m bench.dev_split CORPUS_DIR [MORE_DIR] > bench/dev_speakers.txt")
    print(f"# unseen development speakers: python -m bench.dev_split CORPUS_DIR MORE_DIR (seed {SEED}); "
          "SPLIT SOURCE/SPEAKER")
    for split, speaker in dev_speakers(Path(argv[0]), Path(argv[1]) if len(argv) == 2 else None):
        print(split, speaker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
