"""Write the course's submission CSV for a data folder's testdata.json.

    python -m training.predict --checkpoint CKPT --data DIR --out FILE.csv

The file is what the course's sample code writes with Python's csv module:
`Id,Category`, then `uttr-....pt,<speaker>` per test utterance in the order of
testdata.json, with CRLF line endings.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from tqdm import tqdm

from speaker_app.checkpoint import CheckpointError, load_checkpoint
from speaker_app.files import atomic_write
from speaker_app.inference import infer

from .data import DataError, load_features, read_speakers, read_test


def predict(checkpoint_path: Path, data: Path, progress: bool = True) -> list[tuple[str, str]]:
    try:
        checkpoint = load_checkpoint(checkpoint_path)
        utterances = read_test(data)
        if read_speakers(data) != checkpoint.speakers:
            print("warning: the data's mapping.json differs from the checkpoint's speakers; "
                  "predictions use the checkpoint's", file=sys.stderr)
        features = [load_features(data / u.path, checkpoint.feature_config.n_mels)
                    for u in tqdm(utterances, desc="loading", unit="utt", disable=not progress, leave=False)]
    except (CheckpointError, DataError) as error:
        raise SystemExit(f"error: {error}")
    if not utterances:
        raise SystemExit(f"error: testdata.json in {data} lists no utterances")
    predicted = infer(checkpoint.build_model(), features).logits.argmax(-1).tolist()
    return [(u.path, checkpoint.speakers[p]) for u, p in zip(utterances, predicted)]


def submission(rows: list[tuple[str, str]]) -> str:
    text = io.StringIO(newline="")
    writer = csv.writer(text)  # the course code's writer: CRLF line endings
    writer.writerow(["Id", "Category"])
    writer.writerows(rows)
    return text.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="course-layout data folder with testdata.json")
    parser.add_argument("--out", required=True, type=Path, help="CSV file to write")
    args = parser.parse_args(argv)
    rows = predict(args.checkpoint, args.data)
    atomic_write(args.out, lambda handle: handle.write(submission(rows).encode()))
    print(f"wrote {len(rows)} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
