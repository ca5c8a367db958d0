"""Choose the unseen development speakers of the many-speaker corpus, once, by a seeded rule.

    python -m bench.dev_split CORPUS_DIR > bench/dev_speakers.txt

CORPUS_DIR is what ../shared/corpora/build.sh makes (SOURCE/SPEAKER/clips).
- One whole source is never trained on: `librispeech` (all its speakers go to the test half).
- Of every other source, a third of the speakers with at least 6 clips (enough to enroll 5 and
  test on the rest) and a tenth of those with fewer (impostor clips only) are held out.
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
SEED = 0


def dev_speakers(corpus: Path) -> list[tuple[str, str]]:
    rows = []
    for source in sorted(p for p in corpus.iterdir() if p.is_dir()):
        speakers = sorted(p for p in source.iterdir() if p.is_dir())
        if source.name == UNSEEN_SOURCE:
            rows += [("test", f"{source.name}/{s.name}") for s in speakers]
            continue
        rng = random.Random(f"{SEED}/{source.name}")
        for share, group in ((3, [s for s in speakers if len(list(s.iterdir())) >= ENROLLABLE]),
                             (10, [s for s in speakers if len(list(s.iterdir())) < ENROLLABLE])):
            rng.shuffle(group)
            held = sorted(group[:round(len(group) / share)])
            rows += [("calibration" if i % 2 == 0 else "test", f"{source.name}/{s.name}") for i, s in enumerate(held)]
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
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        raise SystemExit("usage: python -m bench.dev_split CORPUS_DIR > bench/dev_speakers.txt")
    print(f"# unseen development speakers: python -m bench.dev_split CORPUS_DIR (seed {SEED}); SPLIT SOURCE/SPEAKER")
    for split, speaker in dev_speakers(Path(argv[0])):
        print(split, speaker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
