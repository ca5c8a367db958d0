"""Reproduce the default model in checkpoints/, in one command.

    python -m training.default_model --speech ../shared/speech --corpus CORPUS [--work runs/default]
                                     [--out checkpoints/default.pt] [--no-fine-tune]

CORPUS is the many-speaker corpus that ../shared/corpora/build.sh makes.
1. prepare the 31 speakers of --speech (20 % of each speaker's clips held out,
   seed 0, as always) together with CORPUS, leaving out the unseen development
   speakers of bench/dev_speakers.txt (one whole source, LibriSpeech, among them);
2. train the recipe of training/configs/default.json on it (every speaker a class);
3. fine-tune on the same data with half of every batch from the 31 speakers' sources
   (training/configs/default-finetune.json, `training.train --init`; the other half keeps
   the embedding general), then keep the 31 speakers as the model's only classes; the mean
   embeddings of the other training speakers (3 clips each) become the cohort for
   score normalisation;
4. calibrate the decisions (`training.calibrate`) on the calibration half of the
   development speakers, with the 31 speakers' validation clips of step 2 (never
   trained on in either step) as the known speakers' trials;
5. evaluate: the 31 speakers' held-out clips, and enrollment of the test half of
   the development speakers (5 clips each); write the checkpoint with its
   evaluation, calibration and data provenance inside, and its ONNX export
   beside it (`OUT.onnx`), which the app embeds with.

Every step resumes or reuses what an earlier run of this command left in --work, so
the trainings of steps 2 and 3 may be run first on their own, for example in two processes, which
trains twice as fast on a 2-core CPU (WORK/data is what step 1 prepares):

    torchrun --standalone --nproc_per_node=2 -m training.train --data WORK/data --out WORK/run \
        --config training/configs/default.json
    torchrun --standalone --nproc_per_node=2 -m training.train --data WORK/data --out WORK/run-tuned \
        --config training/configs/default-finetune.json --init WORK/run/best.pt

`--no-fine-tune` skips the fine-tuning of step 3 and writes its own calibrated-no-fine-tune.pt
and report-no-fine-tune.json beside the others, for comparing the two. `--wise-ft A` keeps only
the share A of the fine-tuning's weight change (WiSE-FT, Wortsman et al. 2022: the weights
interpolated between the two trainings; measured not to help, bench/notes/2026-12-04-wise-ft.md) and writes
calibrated-wise-ft-A.pt and so on. `--seed` trains both steps with another seed (which also
draws another validation split: give it a --work of its own).

The model embeds clips longer than its training crop in half-overlapping windows of that crop
(`ModelConfig.window_frames`, set in step 3; bench/notes/2026-12-06-embedding-windows.md).
`--recalibrate CKPT` skips the trainings for a default model this command wrote earlier: its
weights and classes are kept; its windows and cohort (the end of step 3), decisions (4) and
evaluation (5) are made again (calibrated-recalibrated.pt and report-recalibrated.json in --work).

The shipped model is an ensemble of two such models (`training.ensemble`;
bench/notes/2026-12-06-ensembles.md), the second trained at lr 3e-3, made and calibrated as one:

    python -m training.default_model --corpus CORPUS --work WORK_A --out A.pt
    python -m training.default_model --corpus CORPUS --work WORK_B --out B.pt --set lr=0.003
    python -m training.ensemble A.pt B.pt --out AB.pt
    python -m training.default_model --corpus CORPUS --work WORK_A --recalibrate AB.pt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from speaker_app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from speaker_app.configs import from_dict
from speaker_app.inference import infer

from . import calibrate, prepare, train
from .config import TrainConfig, read_config_file
from .data import Utterance, load_features, read_labelled, read_speakers, split_utterances
from .evaluate import evaluate
from .prepare import find_clips, split_test

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "configs" / "default.json"
FINE_TUNE = ROOT / "training" / "configs" / "default-finetune.json"
COHORT_CLIPS = 3
DEV_SPEAKERS = ROOT / "bench" / "dev_speakers.txt"
TEST_FRACTION, SEED = 0.2, 0
SPEEDS: list[float] = []  # speed copies of every training clip, as new speakers (see bench.many_speakers)
SOURCES = {
    "vcc2016": "Voice Conversion Challenge 2016 (read English sentences, 16 kHz), ODC-By 1.0",
    "emodb": "Berlin Database of Emotional Speech (acted German, 16 kHz), free for research; Burkhardt et al. 2005",
    "fsdd": "Free Spoken Digit Dataset (English digits, 8 kHz), CC BY-SA 4.0",
    "asterisk": "Asterisk telephony prompts (en, es, fr, it, ru; 8 kHz; Allison Smith, June Wallack, "
                "Marco Menardi / Paola Dal Zot), CC BY-SA 3.0 (ru: CC BY 3.0)",
    "commonvoice": "Mozilla Common Voice 6.1, 100 random clips per language, 59 languages, CC0 "
                   "(credit: the Mozilla Common Voice contributors)",
    "speechcommands": "Google Speech Commands v0.01/v0.02 (parts), 1-s words, CC BY 4.0; P. Warden, "
                      "'Speech Commands: A Dataset for Limited-Vocabulary Speech Recognition', arXiv:1804.03209, 2018",
    "arabic_speechcommands": "Arabic Speech Commands, 1-s words, CC BY 4.0; A. Ghandoura, F. Hjabo, O. Al Dakkak, "
                             "'Building and benchmarking an Arabic Speech Commands dataset for small-footprint keyword "
                             "spotting', Engineering Applications of Artificial Intelligence, 2021",
    "librispeech": "LibriSpeech (train-clean-100, one clip a speaker; Mini LibriSpeech train-clean-5), CC BY 4.0; "
                   "V. Panayotov, G. Chen, D. Povey, S. Khudanpur, 'LibriSpeech: an ASR corpus based on public domain "
                   "audio books', ICASSP 2015. Never trained on: only unseen development speakers",
}


def held_out_clips(speech: Path) -> list[str]:
    """The 31 speakers' held-out clips (relative to the speech folder): the split every default model used."""
    return sorted(split_test(find_clips(speech), TEST_FRACTION, SEED))


def prepared(speech: Path, corpus: Path, folder: Path, speeds: list[float]) -> Path:
    if not (folder / "testdata.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "held_out_31.txt").write_text("\n".join(held_out_clips(speech)) + "\n")
        argv = [str(speech), str(corpus), str(folder), "--test-list", str(folder / "held_out_31.txt"),
                "--exclude-from", str(DEV_SPEAKERS)]
        prepare.main(argv + (["--speed", ",".join(f"{s:g}" for s in speeds)] if speeds else []))
    return folder


def trained(data: Path, run: Path, recipe: Path, extra: list[str]) -> Path:
    """Train (or finish training) `recipe`; returns best.pt."""
    argv = ["--data", str(data), "--out", str(run), "--config", str(recipe), *extra]
    if (run / "last.pt").exists():
        if load_checkpoint(run / "last.pt").step >= json.loads((run / "config.json").read_text())["steps"]:
            return run / "best.pt"
        argv.append("--resume")
    train.main(argv)
    return run / "best.pt"


def known_only(checkpoint: Checkpoint, known: list[str]) -> Checkpoint:
    """The many-speaker model with `known` as its only classes (their rows of the margin head), not fine-tuned."""
    index = {name: i for i, name in enumerate(checkpoint.speakers)}
    state = {**checkpoint.state_dict, "head.weight": checkpoint.state_dict["head.weight"][[index[n] for n in known]].clone()}
    return replace(checkpoint, speakers=list(known), state_dict=state, info=dict(checkpoint.info))


def interpolated(before: Checkpoint, after: Checkpoint, alpha: float) -> Checkpoint:
    """`after` with its floating-point weights at (1 - alpha) * before + alpha * after (WiSE-FT);
    counters such as BatchNorm's num_batches_tracked are after's."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"the share of fine-tuning kept is between 0 and 1, got {alpha}")
    if before.state_dict.keys() != after.state_dict.keys() or before.speakers != after.speakers:
        raise ValueError("WiSE-FT needs two checkpoints of one architecture with the same classes")
    state = {key: torch.lerp(before.state_dict[key], value, alpha) if value.is_floating_point() else value
             for key, value in after.state_dict.items()}
    return replace(after, state_dict=state, info={**after.info, "wise_ft": alpha})


def with_cohort(checkpoint: Checkpoint, data: Path, train: list[Utterance], speakers: list[str],
                known: list[str]) -> Checkpoint:
    """The checkpoint with a cohort: the unit mean embedding of each other training speaker (its first
    COHORT_CLIPS training clips; speed copies, 'name@0.9', are the same voices and are left out)."""
    clips: dict[str, list[Utterance]] = {}
    for u in sorted(train, key=lambda u: u.path):
        name = speakers[u.speaker]
        if name not in set(known) and "@" not in name and len(clips.setdefault(name, [])) < COHORT_CLIPS:
            clips[name].append(u)
    chosen = [u for group in clips.values() for u in group]
    n_mels = checkpoint.feature_config.n_mels
    embeddings = infer(checkpoint.build_model(), [load_features(data / u.path, n_mels) for u in chosen]).embeddings
    owner = torch.tensor([i for i, group in enumerate(clips.values()) for _ in group])
    cohort = torch.zeros(len(clips), embeddings.shape[1]).index_add_(0, owner, embeddings)
    return replace(checkpoint, cohort=F.normalize(cohort, dim=-1), training_state={})


def validation_view(data: Path, config: TrainConfig, known: list[str], folder: Path) -> Path:
    """A folder whose test split is the known speakers' validation clips (never trained on, never the
    held-out test clips): the known speakers' side of the calibration trials."""
    if (folder / "test_labels.csv").exists():
        return folder
    speakers = read_speakers(data)
    _, valid = split_utterances(read_labelled(data, speakers), config.valid_fraction, config.seed)
    chosen = [u for u in valid if speakers[u.speaker] in set(known)]
    folder.mkdir(parents=True, exist_ok=True)
    for u in chosen:
        if not (folder / u.path).exists():
            os.symlink((data / u.path).resolve(), folder / u.path)
    (folder / "mapping.json").write_text(json.dumps({"speaker2id": {s: i for i, s in enumerate(known)},
                                                     "id2speaker": {str(i): s for i, s in enumerate(known)}}))
    (folder / "metadata.json").write_text(json.dumps({"speakers": {}}))
    (folder / "testdata.json").write_text(json.dumps({"utterances": [
        {"feature_path": u.path, "mel_len": u.length} for u in chosen]}))
    (folder / "test_labels.csv").write_text("Id,Category\n" + "".join(f"{u.path},{speakers[u.speaker]}\n" for u in chosen))
    (folder / "feature_config.json").write_text((data / "feature_config.json").read_text())
    return folder


def new_speakers(checkpoint: Path, corpus: Path, cache: Path) -> dict:
    """Enroll each test-half development speaker from 5 clips; identify and verify the rest."""
    if cache.exists():
        return json.loads(cache.read_text())
    test = [name for split, name in (line.split() for line in DEV_SPEAKERS.read_text().splitlines()
                                     if line.strip() and not line.startswith("#")) if split == "test"]
    result = evaluate(checkpoint, audio_dir=corpus, include=test, enroll=5, progress=False)
    result = {"speakers": f"the test half of {DEV_SPEAKERS.relative_to(ROOT)} ({len(test)} speakers, "
                          f"{result['enroll_speakers']} with 6 clips or more)",
              **{k: result[k] for k in ("enroll_top1", "eer", "min_dcf", "enroll_speakers", "enroll_clips",
                                        "enroll_test_clips") if k in result},
              "command": "python -m training.evaluate --checkpoint checkpoints/default.pt --audio-dir CORPUS --enroll 5 "
                         "--include-from <(grep ^test bench/dev_speakers.txt)"}
    cache.write_text(json.dumps(result, indent=1))
    return result


def portable(record, corpus: Path):
    """`record` with this machine's paths written as the commands give them: CORPUS for the corpus,
    repository paths relative to the repository (the app shows the record; no absolute path)."""
    if isinstance(record, dict):
        return {key: portable(value, corpus) for key, value in record.items()}
    if isinstance(record, list):
        return [portable(value, corpus) for value in record]
    if isinstance(record, str):
        for path in {str(corpus), str(corpus.resolve())}:
            record = record.replace(path, "CORPUS")
        return record.replace(f"{ROOT}/", "")
    return record


def windowed(checkpoint: Checkpoint, frames: int) -> Checkpoint:
    """The checkpoint embedding long utterances in half-overlapping windows of `frames` (speaker_app.inference)."""
    return replace(checkpoint, model_config=replace(checkpoint.model_config, window_frames=frames))


def trained_final(args, data: Path, known: list[str]) -> tuple[Checkpoint, TrainConfig, int]:
    """Steps 2 and 3: the model with the 31 speakers as its only classes, the training config that holds
    its validation split, and the number of speakers step 2 trained on."""
    seeded = ["--seed", str(args.seed)] if args.seed is not None else []
    settings = [a for s in args.set for a in ("--set", s)]
    best = trained(data, args.work / "run", RECIPE, ["--no-progress", *settings, *seeded])
    trained_model = load_checkpoint(best)
    config = from_dict(TrainConfig, trained_model.info["train_config"])
    final = trained_model
    if args.fine_tune:
        tuning = from_dict(TrainConfig, read_config_file(FINE_TUNE))
        tuning = tuning if args.seed is None else replace(tuning, seed=args.seed)
        if (tuning.valid_fraction, tuning.seed) != (config.valid_fraction, config.seed):
            raise SystemExit(f"error: {FINE_TUNE} must keep step 2's validation split (valid_fraction, seed): "
                             "the known speakers' validation clips calibrate the decisions and must stay unseen")
        tuned = load_checkpoint(trained(data, args.work / "run-tuned", FINE_TUNE,
                                        ["--no-progress", *seeded, "--init", str(best)]))
        final = interpolated(trained_model, tuned, args.wise_ft)
    return known_only(final, known), config, len(trained_model.speakers)


def write_export(checkpoint: Checkpoint, path: Path) -> None:
    """The export the app embeds with, beside the checkpoint (`speaker_app.onnx_model.served`); an export of
    other weights left there would only be ignored, so it goes when this one cannot be made."""
    try:
        from training.export import export

        export(checkpoint, path, source=path.with_suffix(".pt").name)
        print(f"wrote {path}: the app embeds with it")
    except ImportError as error:
        path.unlink(missing_ok=True)
        print(f"note: no ONNX export beside the checkpoint ({error}; pip install -r requirements-dev.txt): "
              "the app serves it in torch")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.default_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--speech", type=Path, default=Path("../shared/speech"))
    parser.add_argument("--corpus", type=Path, required=True, help="the corpus ../shared/corpora/build.sh made")
    parser.add_argument("--work", type=Path, default=Path("runs/default"))
    parser.add_argument("--out", type=Path, default=Path("checkpoints/default.pt"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to training.train")
    parser.add_argument("--no-fine-tune", dest="fine_tune", action="store_false",
                        help="skip step 3: keep the many-speaker model, its 31 speakers' head rows as their classes")
    parser.add_argument("--wise-ft", type=float, default=1.0, metavar="A",
                        help="keep the share A (0 to 1) of the fine-tuning's weight change (default 1: all)")
    parser.add_argument("--seed", type=int, help="seed of both trainings (default: the configs' 0)")
    parser.add_argument("--recalibrate", type=Path, metavar="CKPT",
                        help="skip the trainings: for CKPT, a default model this command wrote, make its embedding "
                             "windows, cohort, decisions and evaluation again (its weights and classes kept)")
    args = parser.parse_args(argv)
    if not 0 <= args.wise_ft <= 1:
        parser.error(f"--wise-ft is between 0 and 1, got {args.wise_ft}")
    if args.recalibrate and (args.set or args.seed is not None or not args.fine_tune or args.wise_ft != 1):
        parser.error("--recalibrate takes a trained model as it is: no --set, --seed, --no-fine-tune or --wise-ft")
    started = time.time()
    known = sorted(find_clips(args.speech))

    data = prepared(args.speech, args.corpus, args.work / "data", SPEEDS)
    speakers = read_speakers(data)
    if args.recalibrate:
        final = load_checkpoint(args.recalibrate)
        if final.speakers != known or "training_data" not in final.info:
            raise SystemExit(f"error: {args.recalibrate} is not a default model of these {len(known)} speakers")
        config = from_dict(TrainConfig, final.info["train_config"])
        classes, command = final.info["training_data"]["classes"], final.info["training_data"]["command"]
        if "ensemble" in final.info:  # training.ensemble's record of its members, each trained by this command
            members = [f"M{i}" for i in range(1, len(final.info["ensemble"]) + 1)]
            assembled = f"python -m training.ensemble {' '.join(n + '.pt' for n in members)} --out ENSEMBLE.pt"
            command = "; ".join([*(f"{m['command']} --work WORK_{name} --out {name}.pt"
                                   for m, name in zip(final.info["ensemble"], members)), assembled])
        suffix = "-recalibrated"
        for stale in (f"calibrated{suffix}.pt", f"new_speakers{suffix}.json"):  # of another CKPT, maybe
            (args.work / stale).unlink(missing_ok=True)
    else:
        final, config, classes = trained_final(args, data, known)
        options = ([] if args.fine_tune else ["--no-fine-tune"]) + [f"--set {s}" for s in args.set] \
            + ([f"--seed {args.seed}"] if args.seed is not None else []) \
            + ([f"--wise-ft {args.wise_ft:g}"] if args.wise_ft != 1 else [])
        command = " ".join(["python -m training.default_model --speech ../shared/speech --corpus CORPUS", *options])
        suffix = "-no-fine-tune" if not args.fine_tune else f"-wise-ft-{args.wise_ft:g}" if args.wise_ft != 1 else ""
    final = windowed(final, config.segment_frames)
    train_clips, _ = split_utterances(read_labelled(data, speakers), config.valid_fraction, config.seed)
    calibrated, exported = args.work / f"calibrated{suffix}.pt", args.work / f"exported{suffix}.pt"
    if not calibrated.exists():
        save_checkpoint(with_cohort(final, data, train_clips, speakers, known), exported)
        known_valid = validation_view(data, config, known, args.work / "known-valid")
        calibrate.main(["--checkpoint", str(exported), "--audio-dir", str(args.corpus),
                        "--speakers", str(DEV_SPEAKERS), "--split", "calibration", "--known-data", str(known_valid),
                        "--out", str(calibrated), "--no-progress"])
    test = evaluate(calibrated, data=data, progress=False)
    new = new_speakers(calibrated, args.corpus, args.work / f"new_speakers{suffix}.json")
    checkpoint = load_checkpoint(calibrated)
    checkpoint.info.update({
        "training_data": {
            "sources": {name: about for name, about in SOURCES.items()},
            "classes": classes,
            "speed_copies": SPEEDS,
            "held_out": f"{TEST_FRACTION:.0%} of each of the 31 speakers' clips, seed {SEED}; every development "
                        f"speaker of {DEV_SPEAKERS.relative_to(ROOT)} (LibriSpeech whole)",
            "command": command,
            "held_out_clips": held_out_clips(args.speech),
        },
        "evaluation": test,
        "new_speakers": new,
        "calibration": portable(checkpoint.info["calibration"], args.corpus),
    })
    if args.recalibrate:
        made_for = ("the ensemble" if checkpoint.model_config.members > 1
                    else f"{checkpoint.model_config.window_frames}-frame embedding windows")
        checkpoint.info["training_data"]["recalibrated"] = (
            f"cohort and decisions made again for {made_for}: "
            "python -m training.default_model --speech ../shared/speech --corpus CORPUS --recalibrate CKPT")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(checkpoint, args.out)
    write_export(checkpoint, args.out.with_suffix(".onnx"))
    report = {k: checkpoint.info[k] for k in ("evaluation", "new_speakers", "calibration")}
    if not args.recalibrate:
        report["training_time_s"] = sum(load_checkpoint(args.work / run / "last.pt").metrics.get("elapsed_s", 0)
                                        for run in ("run", "run-tuned")[:2 if args.fine_tune else 1])
    report["total_time_s"] = time.time() - started
    (args.work / f"report{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
