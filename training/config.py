"""Training configuration: dataclass defaults -> optional JSON/YAML file -> command-line flags.

The resolved config is written to `RUN_DIR/config.json` and into each
checkpoint. Derived values (the number of speakers) are never stored here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from speaker_app.configs import from_dict
from speaker_app.model import ModelConfig

from .augment import AugmentConfig


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    steps: int = 4000
    batch_size: int = 64  # global: split across ranks under torchrun
    # random crop length: 1.2 s. The full recipe on the 31 speakers (then with lr 2e-3, best.pt picked on a tenth
    # held out): held-out top-1 99.35 / 98.86 / 98.37 % (seeds 0-2) against 97.7 % with 200 frames and 98.5 / 97.6 % with 80 (bench/notes/2026-12-03-crop-length.md). Most of their clips are 2 s or
    # shorter: a 2-s crop shows such a clip whole at every draw, a shorter one a different part each time.
    segment_frames: int = 120
    # how to draw clips: a speaker is drawn in proportion to (its clips)^(1 - balance_speakers), so
    # 1 (or true) draws every speaker equally often, 0 (or false) every clip, 0.5 a speaker by the root of its clips
    balance_speakers: float = 1.0
    # the share of every batch drawn from each named source (a speaker's source is its name up to the first
    # "/"); the sources not named share the rest as balance_speakers draws them. {} draws by balance_speakers alone
    source_shares: dict[str, float] = field(default_factory=dict)
    # the share of every batch drawn from one source, chosen anew each step in proportion to its weight, so that
    # speakers of one channel and condition (the hard impostors) meet in a batch; 0 draws the whole batch as above
    same_source: float = 0.0
    # lr 4e-3 and no validation split (best.pt is the last step): the 31 speakers' full recipe makes 6.5 errors on
    # its 612 held-out clips over 10 seeds on a GPU, against 10.2 over 6 with lr 2e-3 and a tenth held out to pick
    # best.pt; 6 and 5 on the CPU (bench/notes/2026-12-04-learning-rate-and-validation-split.md). Give a run a validation split (`--set valid_fraction=0.1`) to follow it as it trains.
    lr: float = 4e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    grad_clip: float = 5.0
    margin_ramp: tuple[float, float] = (0.0, 0.0)  # margin 0 until the first fraction of steps, full from the second
    valid_fraction: float = 0.0
    valid_every: int = 250
    valid_max_frames: int = 40000  # frames per validation batch
    seed: int = 0
    workers: int = 2  # loader processes, only when features are read from disk
    preload_gb: float = 8.0  # hold features in memory (float16) when they fit in this
    compile: bool = False
    precision: str = "bf16"  # on CUDA: "bf16" autocast or "fp32"; the CPU always trains in float32
    # a checkpoint whose embedding the model is also trained to copy (training.distill), with this weight
    # on the mean cosine distance between the two embeddings of each crop; "" trains on labels alone
    teacher: str = ""
    distill_weight: float = 0.0

    def __post_init__(self):
        positive = ("steps", "batch_size", "segment_frames", "valid_every", "valid_max_frames")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if not 0 <= self.balance_speakers <= 1:
            raise ValueError(f"balance_speakers must be in [0, 1] (or true/false), got {self.balance_speakers}")
        shares = self.source_shares
        if not isinstance(shares, dict) or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in shares.values()) \
                or sum(shares.values()) > 1 + 1e-9:
            raise ValueError(f"source_shares must map sources to shares in (0, 1] that add up to at most 1, got {shares!r}")
        if not 0 <= self.same_source <= 1:
            raise ValueError(f"same_source must be in [0, 1], got {self.same_source}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if self.distill_weight < 0 or bool(self.teacher) != (self.distill_weight > 0):
            raise ValueError(f"distillation needs both a teacher and a positive distill_weight, got "
                             f"teacher={self.teacher!r}, distill_weight={self.distill_weight}")
        start, end = self.margin_ramp
        if not 0 <= start <= end <= 1:
            raise ValueError(f"margin_ramp must be two fractions of the steps, 0 <= start <= end <= 1, got {self.margin_ramp}")

    def to_dict(self) -> dict:
        return asdict(self)


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def override(config: TrainConfig, assignments: list[str]) -> TrainConfig:
    """Apply `key=value` or `model.key=value` assignments; values are parsed as JSON when they can be."""
    data = config.to_dict()
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {assignment!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = data
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        if leaf not in target:
            raise ValueError(f"unknown config key {key!r}")
        target[leaf] = value
    return from_dict(TrainConfig, data)
