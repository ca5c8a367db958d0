"""The course data layout, the train/valid split and batches of random crops.

A data folder holds `mapping.json`, `metadata.json` (labelled utterances),
`testdata.json` (unlabelled) and one `uttr-*.pt` (T, n_mels) tensor per
utterance. Only files named in the JSON are read, so other `.pt` files in the
folder (such as `wav2mel.pt`) are ignored.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from speaker_app.features import FeatureError, check_features
from speaker_app.files import TensorFileError, load_tensor_file

# Independent random streams of one training step (see step_generator).
BATCH, AUGMENT, DROPOUT = 0, 1, 2


class DataError(ValueError):
    """A data folder that does not follow the course layout."""


@dataclass(frozen=True)
class Utterance:
    path: str  # feature file, relative to the data folder
    speaker: int  # index into the speaker list; -1 when unknown
    length: int  # frames


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"missing {path.name} in {path.parent}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None


def read_speakers(root: Path) -> list[str]:
    """Speaker names ordered by their class id, from mapping.json."""
    mapping = read_json(Path(root) / "mapping.json")
    try:
        id2speaker = mapping["id2speaker"]
        speakers = [id2speaker[str(i)] for i in range(len(id2speaker))]
    except KeyError as error:
        raise DataError(f"mapping.json lacks id2speaker entry {error}") from None
    return speakers


def read_labelled(root: Path, speakers: list[str]) -> list[Utterance]:
    """The utterances of metadata.json with their class ids."""
    metadata = read_json(Path(root) / "metadata.json")
    index = {name: i for i, name in enumerate(speakers)}
    utterances = []
    for name, items in metadata.get("speakers", {}).items():
        if name not in index:
            raise DataError(f"speaker {name!r} of metadata.json is not in mapping.json")
        utterances += [Utterance(item["feature_path"], index[name], int(item["mel_len"])) for item in items]
    if not utterances:
        raise DataError(f"metadata.json in {root} lists no utterances")
    return utterances


def read_test(root: Path, speakers: list[str] | None = None) -> list[Utterance]:
    """The utterances of testdata.json in file order; labelled from test_labels.csv when present."""
    items = read_json(Path(root) / "testdata.json").get("utterances", [])
    labels = read_test_labels(root)
    index = {name: i for i, name in enumerate(speakers or [])}
    return [Utterance(item["feature_path"], index.get(labels.get(item["feature_path"]), -1), int(item["mel_len"]))
            for item in items]


def read_test_labels(root: Path) -> dict[str, str]:
    path = Path(root) / "test_labels.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as handle:
        return {row["Id"]: row["Category"] for row in csv.DictReader(handle)}


def stratified_split(groups: dict, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out about `fraction` of each group's items (at least one, never all): -> (kept, held).
    Groups are visited in sorted order and each is shuffled by one seeded generator, so the
    split depends only on the groups (their items in a fixed order) and the seed."""
    rng = random.Random(seed)
    kept, held = [], []
    for key in sorted(groups):
        items = list(groups[key])
        rng.shuffle(items)
        n = min(len(items) - 1, max(1, round(fraction * len(items)))) if fraction > 0 else 0
        held += items[:n]
        kept += items[n:]
    return kept, held


def split_utterances(utterances: list[Utterance], fraction: float, seed: int):
    """Speaker-stratified train/valid split (see stratified_split). It depends only on the list and
    the seed, so it is the same on every run, resume and rank."""
    by_speaker: dict[int, list[Utterance]] = {}
    for utterance in sorted(utterances, key=lambda u: u.path):
        by_speaker.setdefault(utterance.speaker, []).append(utterance)
    return stratified_split(by_speaker, fraction, seed)


def load_features(path: Path, n_mels: int) -> torch.Tensor:
    """A (T, n_mels) float tensor from a .pt file, loaded without running pickled code."""
    if not path.is_file():
        raise DataError(f"missing feature file {path}")
    try:
        return check_features(load_tensor_file(path), n_mels, path.name)
    except TensorFileError as error:
        raise DataError(f"cannot load {path.name}: {error}") from None
    except FeatureError as error:
        raise DataError(str(error)) from None


class FeatureBank:
    """All utterances in one (frames, n_mels) tensor, so a batch of crops is one gather.

    Lives on any device; float16 storage halves memory (log-mels need no more).
    """

    def __init__(self, root: Path, utterances: list[Utterance], n_mels: int,
                 dtype: torch.dtype = torch.float32, progress: bool = True):
        lengths = [u.length for u in utterances]
        self.frames = torch.empty(sum(lengths), n_mels, dtype=dtype)
        self.offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)
        self.lengths = torch.tensor(lengths)
        self.labels = torch.tensor([u.speaker for u in utterances])
        for utterance, offset in zip(tqdm(utterances, desc="loading features", disable=not progress,
                                          unit="utt", leave=False), self.offsets.tolist()):
            features = load_features(Path(root) / utterance.path, n_mels)
            if len(features) != utterance.length:
                raise DataError(f"{utterance.path}: metadata says {utterance.length} frames, file has {len(features)}")
            self.frames[offset:offset + utterance.length] = features

    def __len__(self) -> int:
        return len(self.lengths)

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-mel-bin mean and standard deviation over all frames."""
        total = torch.zeros(self.frames.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for block in self.frames.split(1 << 20):
            block = block.double().cpu()
            total += block.sum(0)
            squares += (block * block).sum(0)
        mean = total / len(self.frames)
        return mean.float(), (squares / len(self.frames) - mean * mean).clamp(min=0).sqrt().float()

    def to(self, device: torch.device) -> FeatureBank:
        for name in ("frames", "offsets", "lengths", "labels"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def crops(self, index: torch.Tensor, segment: int, generator: torch.Generator):
        """Random `segment`-frame crops of utterances `index` (shorter ones whole, zero-padded)
        -> features (B, segment, n_mels) float32, lengths (B,), labels (B,)."""
        return self.crops_at(index, segment, torch.rand(len(index), generator=generator))

    def crops_at(self, index: torch.Tensor, segment: int, position: torch.Tensor):
        """As `crops`, with each crop's place given: `position` (B,) in [0, 1) (see crop_starts).
        Stays on the bank's device: no host synchronisation."""
        index = index.to(self.lengths.device, non_blocking=True)
        full = self.lengths[index]
        lengths = full.clamp(max=segment)
        starts = crop_starts(position.to(index.device, non_blocking=True), full, lengths)
        steps = torch.arange(segment, device=index.device)
        rows = self.offsets[index, None] + starts[:, None] + steps.clamp(max=lengths[:, None] - 1)  # (B, S)
        features = self.frames[rows].float()
        features = features.masked_fill((steps[None, :] >= lengths[:, None])[..., None], 0.0)
        return features, lengths, self.labels[index]

    def whole(self, index: list[int]):
        """Full utterances, zero-padded -> (B, T_max, n_mels), lengths (B,), labels (B,)."""
        lengths = self.lengths[index]
        items = [self.frames[o:o + n].float() for o, n in zip(self.offsets[index].tolist(), lengths.tolist())]
        return torch.nn.utils.rnn.pad_sequence(items, batch_first=True), lengths, self.labels[index]


def crop_starts(position: torch.Tensor, lengths: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
    """First frame of each crop: `position` in [0, 1) spread over the room an utterance leaves."""
    return (position * (lengths - crop + 1)).long().minimum(lengths - crop)


class CropDataset(Dataset):
    """Reads utterances from disk on demand: for data sets too large to hold in memory.
    Items are (utterance index, crop position) pairs, as GlobalBatchSampler yields them."""

    def __init__(self, root: Path, utterances: list[Utterance], n_mels: int, segment: int):
        self.root, self.n_mels, self.segment = Path(root), n_mels, segment
        # Two arrays rather than a million Python objects: forked loader workers read them
        # without touching reference counts, so they share the pages instead of copying them.
        self.paths = np.array([u.path.encode() for u in utterances])
        self.speakers = np.array([u.speaker for u in utterances])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, float]):
        i, position = item
        features = load_features(self.root / self.paths[i].decode(), self.n_mels)
        full = torch.tensor(len(features))
        crop = full.clamp(max=self.segment)
        start = int(crop_starts(torch.tensor(position, dtype=torch.float32), full, crop))
        return features[start:start + int(crop)], int(self.speakers[i])


def sample_statistics(root: Path, utterances: list[Utterance], n_mels: int, count: int = 2000, seed: int = 0):
    """Per-mel-bin mean and standard deviation from a random sample of utterances read from disk."""
    sample = random.Random(seed).sample(utterances, min(count, len(utterances)))
    bank = FeatureBank(root, sample, n_mels, progress=False)
    return bank.statistics()


def pad_batch(items):
    features = [f for f, _ in items]
    lengths = torch.tensor([len(f) for f in features])
    return (torch.nn.utils.rnn.pad_sequence(features, batch_first=True), lengths,
            torch.tensor([label for _, label in items]))


def derived_seed(*keys: int) -> int:
    """A well-mixed 64-bit seed from integer keys such as (seed, step, stream, rank)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The random numbers of one training step. They depend on (seed, step, stream) only, never on
    the rank or the number of processes: every rank draws the same global batch, and a resumed
    run draws what an uninterrupted one would have."""
    return torch.Generator().manual_seed(derived_seed(seed, step, stream))


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s equal slice of a global batch."""
    size = len(x) // world
    return x[rank * size:(rank + 1) * size]


def global_batches(weights: torch.Tensor, batch_size: int, seed: int, step: int = 0, rank: int = 0,
                   world: int = 1, sources: torch.Tensor | None = None, same_source: float = 0.0):
    """Endless (index, position) pairs from step `step` on: each step draws a global batch of
    `batch_size` utterances (with replacement, in proportion to `weights`) and crop positions,
    and keeps this rank's slice. With `same_source` > 0, that share of every batch comes from one
    source (`sources[i]` is utterance i's), drawn anew each step in proportion to its weight and shuffled
    into the batch, so every rank's slice gets its share: its speakers share a channel and a condition,
    the hardest impostors for one another."""
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
    together = round(same_source * batch_size) if sources is not None else 0
    if together:
        source_weights = torch.zeros(int(sources.max()) + 1, dtype=weights.dtype).index_add_(0, sources, weights)
    while True:
        generator = step_generator(seed, step, BATCH)
        index = torch.multinomial(weights, batch_size - together, replacement=True, generator=generator)
        if together:
            source = torch.multinomial(source_weights, 1, generator=generator)
            within = torch.where(sources == source, weights, torch.zeros_like(weights))
            index = torch.cat([torch.multinomial(within, together, replacement=True, generator=generator), index])
        position = torch.rand(batch_size, generator=generator)
        if together:  # spread over the ranks' slices
            order = torch.randperm(batch_size, generator=generator)
            index, position = index[order], position[order]
        yield shard(index, rank, world), shard(position, rank, world)
        step += 1


class GlobalBatchSampler:
    """A DataLoader batch sampler over global_batches: lists of (utterance index, crop position)."""

    def __init__(self, weights: torch.Tensor, batch_size: int, seed: int, step: int = 0, rank: int = 0,
                 world: int = 1, sources: torch.Tensor | None = None, same_source: float = 0.0):
        self.args = (weights, batch_size, seed, step, rank, world, sources, same_source)

    def __iter__(self):
        for index, position in global_batches(*self.args):
            yield list(zip(index.tolist(), position.tolist()))


def source_of(name: str) -> str:
    """A speaker's source: its name up to the first "/" ("" when it has none)."""
    return name.split("/")[0] if "/" in name else ""


def utterance_sources(utterances: list[Utterance], speakers: list[str]) -> torch.Tensor:
    """Each utterance's source as an index into the sorted source names of `speakers`."""
    names = sorted({source_of(name) for name in speakers})
    ids = torch.tensor([names.index(source_of(name)) for name in speakers])
    return ids[torch.tensor([u.speaker for u in utterances])]


def sampling_weights(utterances: list[Utterance], balance_speakers: float, source_shares: dict | None = None,
                     speakers: list[str] | None = None) -> torch.Tensor:
    """Per-utterance sampling weights, (speaker's clips)^-balance_speakers: 0 draws every clip equally
    often, 1 every speaker, 0.5 a speaker in proportion to the square root of its clips. With
    `source_shares` ({source: share}, a speaker's source being `speakers[i]` up to its first "/"), each
    named source's clips get that share of the weight in all, and the other sources the rest."""
    labels = torch.tensor([u.speaker for u in utterances])
    weights = torch.bincount(labels).float()[labels] ** -float(balance_speakers)
    if not source_shares:
        return weights
    weights = weights.double()
    source = [source_of(speakers[i]) for i in labels.tolist()]
    named = torch.zeros(len(utterances), dtype=torch.bool)
    for name, share in source_shares.items():
        mask = torch.tensor([s == name for s in source])
        if not mask.any():
            raise ValueError(f"source_shares names {name!r}, but no training speaker's name starts with '{name}/'")
        weights[mask] *= share / weights[mask].sum()
        named |= mask
    rest = 1 - sum(source_shares.values())
    weights[~named] *= (rest / weights[~named].sum()) if rest > 0 and (~named).any() else 0.0
    return weights.float()


def crop_batches(train: list[Utterance], root: Path, n_mels: int, batch_size: int, segment: int,
                 seed: int, bank: FeatureBank | None, workers: int = 2, balance_speakers: float = 1.0,
                 step: int = 0, rank: int = 0, world: int = 1, source_shares: dict | None = None,
                 speakers: list[str] | None = None, same_source: float = 0.0):
    """An endless stream of (features, lengths, labels) batches of random crops, drawn with
    `sampling_weights(train, balance_speakers, source_shares, speakers)` and `same_source` of each batch
    from one source (see global_batches), from training step `step` on. `batch_size` is the global batch; rank
    `rank` of `world` processes gets its equal slice, so any number of processes trains on the same
    global batches. From memory when a bank is given, else read from disk by `workers` processes;
    both give the same crops (from disk, padded only to the longest crop of the batch)."""
    weights = sampling_weights(train, balance_speakers, source_shares, speakers)
    sources = utterance_sources(train, speakers) if same_source else None
    draw = (weights, batch_size, seed, step, rank, world, sources, same_source)
    if bank is not None:
        for index, position in global_batches(*draw):
            yield bank.crops_at(index, segment, position)
    loader = DataLoader(CropDataset(root, train, n_mels, segment), batch_sampler=GlobalBatchSampler(*draw),
                        num_workers=workers, collate_fn=pad_batch, persistent_workers=workers > 0,
                        pin_memory=torch.cuda.is_available())
    yield from loader
