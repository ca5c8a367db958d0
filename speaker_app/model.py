"""Speaker classifiers on (B, T, n_mels) log-mel features.

Reads top-down: the parts (feed-forward, rotary positions, self-attention,
mask-aware batch norm, convolution module, front ends, Conformer block,
attentive pooling, margin heads), then `ModelConfig`, then the networks
(`SpeakerConformer`, the course's sample `BaselineTransformer`) and `Ensemble`:
several trained models of one config answering as one. `speaker_app.registry`
builds a network by `ModelConfig.kind` (`build_model`), this module's kinds and
the benchmarks' peer (`speaker_app.ecapa`) alike.

Lengths travel with the features: padding is masked in the front end, in
attention, in the depthwise convolution, in batch-norm statistics and in the
pooling softmax, so a padded batch gives the same outputs as one utterance at
a time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives
import torch.nn.functional as F
from torch import nn

from .configs import from_dict


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def strided_lengths(lengths: torch.Tensor, stride: int) -> torch.Tensor:
    """Frames left by a kernel-3, padding-1 convolution of this stride."""
    return (lengths - 1) // stride + 1


class FeedForward(nn.Module):
    """Conformer feed-forward module (pre-norm, Swish); used as two macaron halves."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden, dim), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of (B, H, T, Dh) queries or keys, position = frame index.
    Positions count from the first frame, so padding at the end changes nothing."""
    T, half = x.shape[-2], x.shape[-1] // 2
    frequencies = 10000 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * frequencies  # (T, Dh/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:2 * half]
    return torch.cat([first * cos - second * sin, first * sin + second * cos, x[..., 2 * half:]], dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention over (B, T, D) with a key padding mask, optionally rotary positions."""

    def __init__(self, dim: int, n_heads: int, dropout: float, rotary: bool = False):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"d_model ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout
        self.rotary = rotary

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_weights: bool = False):
        """x (B, T, D), mask (B, T) -> (B, T, D), and (B, H, T, T) weights if asked."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = rotate(q), rotate(k)
        keys = mask[:, None, None, :]  # (B, 1, 1, T): no query attends to padding
        if return_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.n_heads)
            weights = scores.masked_fill(~keys, float("-inf")).softmax(dim=-1)  # (B, H, T, T)
            y = weights @ v
        else:
            weights = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, H, T, Dh) -> (B, T, D)
        return self.out(y), weights


def all_processes(total: torch.Tensor) -> torch.Tensor:
    """Sum over the processes of a distributed run (differentiably), so that batch statistics are
    those of the global batch at any number of processes; the identity in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return collectives.all_reduce(total, "sum", dist.group.WORLD)  # differentiable: its backward sums too
    return total


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the real frames of (B, T, D): padding neither enters the statistics nor
    changes with them, and under DDP the statistics are the global batch's (as SyncBatchNorm).
    In eval mode it is the usual per-channel affine map of the running statistics."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        real = mask[..., None].float()  # (B, T, 1); statistics in float32 whatever the autocast dtype
        x32 = x.float()
        totals = all_processes(torch.cat([(x32 * real).sum((0, 1)), real.sum()[None]]))
        n = totals[-1]
        mean = totals[:-1] / n  # (D,)
        var = all_processes(((x32 - mean).square() * real).sum((0, 1))) / n
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp(min=1), self.momentum)
            self.num_batches_tracked += 1
        y = (x32 - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(x.dtype)


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, norm, Swish, pointwise conv (Gulati et al. 2020).

    Padding is zeroed before the depthwise convolution so it cannot leak into
    real frames. The norm after it is LayerNorm or, as in the paper, BatchNorm
    (mask-aware, statistics of real frames only).
    """

    def __init__(self, dim: int, kernel_size: int, dropout: float, norm: str = "layer"):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, got {kernel_size}")
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.batch_norm = norm == "batch"
        # Batch norm removes any per-channel constant, so a bias before it would only drift (Adam moves
        # parameters of zero gradient on float noise) and show through the lagging running mean.
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim,
                                   bias=not self.batch_norm)
        self.depthwise_norm = MaskedBatchNorm(dim) if self.batch_norm else nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.pointwise_in(self.norm(x)), dim=-1)  # (B, T, D)
        x = x.masked_fill(~mask[..., None], 0.0)
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)  # (B, D, T) for Conv1d
        x = self.depthwise_norm(x, mask) if self.batch_norm else self.depthwise_norm(x)
        return self.dropout(self.pointwise_out(F.silu(x)))


def time_strides(factor: int, late: bool = False) -> list[int]:
    """Two convolution layers whose time strides multiply to `factor` (1, 2 or 4); `late`: a single
    stride on the second layer, so the first sees every frame."""
    return {1: [1, 1], 2: [1, 2] if late else [2, 1], 4: [2, 2]}[factor]


class Subsampling(nn.Module):
    """A linear projection, then stride-2 convolutions (kernel 3) until time is `factor` times shorter."""

    def __init__(self, n_mels: int, dim: int, factor: int):
        super().__init__()
        self.project = nn.Linear(n_mels, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 3, stride=2, padding=1) for _ in range(factor.bit_length() - 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """(B, T, n_mels), mask (B, T) -> (B, T', D), mask (B, T')."""
        x = self.project(x)
        lengths = mask.sum(1)
        for conv in self.convs:
            x = x.masked_fill(~mask[..., None], 0.0)  # padding must read as the zeros a lone utterance sees
            x = F.silu(conv(x.transpose(1, 2))).transpose(1, 2)  # Conv1d wants (B, D, T)
            lengths = strided_lengths(lengths, 2)
            mask = padding_mask(lengths, x.shape[1])
        return x, mask


class Subsampling2d(nn.Module):
    """Two 3x3 convolutions over (time, mel) with stride 2 in frequency, then a projection to d_model:
    local time-frequency patterns, as in Conformer ASR front ends and MFA-Conformer."""

    def __init__(self, n_mels: int, dim: int, factor: int, channels: int, late_stride: bool = False):
        super().__init__()
        self.strides = time_strides(factor, late_stride)
        self.convs = nn.ModuleList([nn.Conv2d(1, channels, 3, stride=(self.strides[0], 2), padding=1),
                                    nn.Conv2d(channels, channels, 3, stride=(self.strides[1], 2), padding=1)])
        bins = strided_lengths(strided_lengths(torch.tensor(n_mels), 2), 2)
        self.project = nn.Linear(channels * int(bins), dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """(B, T, n_mels), mask (B, T) -> (B, T', D), mask (B, T')."""
        x = x[:, None]  # (B, 1, T, n_mels)
        lengths = mask.sum(1)
        for conv, stride in zip(self.convs, self.strides):
            x = x.masked_fill(~mask[:, None, :, None], 0.0)
            x = F.silu(conv(x))  # (B, C, T', F')
            lengths = strided_lengths(lengths, stride)
            mask = padding_mask(lengths, x.shape[2])
        B, C, T, bins = x.shape
        return self.project(x.permute(0, 2, 1, 3).reshape(B, T, C * bins)), mask  # (B, T', C * F') -> (B, T', D)


class ConformerBlock(nn.Module):
    """Macaron FF/2 -> self-attention -> convolution -> FF/2 -> LayerNorm (Gulati et al. 2020)."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, kernel_size: int, dropout: float,
                 conv_norm: str = "layer", rotary: bool = False):
        super().__init__()
        self.ff1 = FeedForward(dim, ff_dim, dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout, rotary)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(dim, kernel_size, dropout, conv_norm)
        self.ff2 = FeedForward(dim, ff_dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_weights: bool = False):
        x = x + 0.5 * self.ff1(x)
        y, weights = self.attn(self.attn_norm(x), mask, return_weights)
        x = x + self.attn_dropout(y)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x), weights


def weighted_stats(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), weights (B, T) or (B, T, D) summing to 1 over time -> [mean, std] (B, 2D), in x's dtype
    (float32 under autocast: the centred formula, since E[x^2] - mean^2 in bf16 loses a small variance)."""
    if weights.dim() == 2:
        mean = torch.einsum("bt,btd->bd", weights, x)
        var = torch.einsum("bt,btd->bd", weights, (x - mean[:, None]).square())
    else:
        mean = (weights * x).sum(1)
        var = (weights * (x - mean[:, None]).square()).sum(1)
    return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=-1)


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over time (Okabe et al. 2018)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """x (B, T, D), mask (B, T) -> stats (B, 2D), weights (B, T) summing to 1 over real frames.

        The statistics are computed in float32 with the centred formula: under bf16 autocast,
        E[x^2] - mean^2 loses every digit of a small variance."""
        scores = self.score(x).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        with torch.autocast(x.device.type, enabled=False):  # autocast would run the sums in bf16 again
            weights = scores.softmax(dim=-1)  # (B, T)
            return weighted_stats(x.float(), weights), weights


class ChannelAttentiveStatsPooling(nn.Module):
    """Attentive statistics pooling with a weight per frame and channel, scored with the utterance's
    global mean and standard deviation beside each frame (ECAPA-TDNN, Desplanques et al. 2020)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(3 * dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """x (B, T, D), mask (B, T) -> stats (B, 2D), weights (B, T): the channels' mean weight per frame."""
        with torch.autocast(x.device.type, enabled=False):
            uniform = mask.float() / mask.sum(1, keepdim=True)
            context = weighted_stats(x.float(), uniform).to(x.dtype)  # (B, 2D)
        context = context[:, None].expand(-1, x.shape[1], -1)
        scores = self.score(torch.cat([x, context], dim=-1)).float()  # (B, T, D)
        scores = scores.masked_fill(~mask[..., None], float("-inf"))
        with torch.autocast(x.device.type, enabled=False):
            weights = scores.softmax(dim=1)
            return weighted_stats(x.float(), weights), weights.mean(-1)


class MarginHead(nn.Module):
    """Cosine classifier with a margin at the target class: additive (AM-softmax, Wang et al. 2018),
    logit s * (cos(theta) - m), or additive angular (AAM, ArcFace, Deng et al. 2019), s * cos(theta + m).

    Embeddings and class weights are both L2-normalised, so logits lie in [-s, s]
    without labels. The margin applies only when labels are given (training);
    `set_margin` changes it during training (a margin schedule), as a buffer, so
    a compiled graph is not rebuilt at each change.
    """

    def __init__(self, emb_dim: int, n_classes: int, scale: float, margin: float, angular: bool = False):
        super().__init__()
        if scale <= 0 or not 0 <= margin < 1:
            raise ValueError(f"need scale s > 0 and 0 <= margin m < 1, got s={scale}, m={margin}")
        self.weight = nn.Parameter(torch.randn(n_classes, emb_dim) * 0.01)
        self.scale = scale
        self.angular = angular
        self.register_buffer("margin", torch.tensor(float(margin)), persistent=False)

    def set_margin(self, margin: float):
        self.margin.fill_(margin)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T  # (B, C)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = self.cosine(embeddings)
        if labels is None:
            return self.scale * cosine
        target = F.one_hot(labels, cosine.shape[-1]).bool()
        return self.scale * torch.where(target, self.with_margin(cosine.float()).to(cosine.dtype), cosine)

    def with_margin(self, cosine: torch.Tensor) -> torch.Tensor:
        m = self.margin
        if not self.angular:
            return cosine - m
        sine = (1 - cosine.square()).clamp(min=0).sqrt()
        shifted = cosine * m.cos() - sine * m.sin()  # cos(theta + m)
        # Past theta = pi - m, cos(theta + m) would rise again: continue monotonically instead (ArcFace).
        return torch.where(cosine > -m.cos(), shifted, cosine - m * m.sin())

    def without_margin(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin logits of `forward(embeddings, labels)` -> the logits without labels (s * cos)."""
        target = F.one_hot(labels, logits.shape[-1]).bool()
        shifted = (logits.float() / self.scale).clamp(-1, 1)
        m = self.margin
        if not self.angular:
            plain = shifted + m
        else:
            fallback = shifted < -m.cos() - m * m.sin()
            plain = torch.where(fallback, shifted + m * m.sin(), torch.cos(torch.acos(shifted) - m))
        return torch.where(target, self.scale * plain, logits.float())


class LinearHead(nn.Module):
    """The course baseline's Linear-ReLU-Linear classifier (labels are ignored)."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, n_classes))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(embeddings)

    def without_margin(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits


# The kinds of network, the keys of `speaker_app.registry.MODELS`: ours, the course sample, the benchmarks' peer.
KINDS = ("conformer", "baseline", "ecapa")
# What each choice of ModelConfig may be.
CHOICES = {
    "input_norm": ("global", "cmn", "none"),  # per-bin statistics of the training data, per utterance, none
    "frontend": ("conv2d", "conv1d"),
    "conv_norm": ("batch", "layer"),
    "position": ("none", "rotary"),
    "aggregate": ("mfa", "last", "mfa-dense"),  # pool every block's output (multi-scale aggregation), the last
    # one's, or every block's through a pointwise layer (ReLU, BatchNorm) first, as ECAPA-TDNN does
    "stats_norm": ("none", "batch"),  # BatchNorm of the pooled statistics before the embedding (ECAPA-TDNN)
    "head": ("am", "aam"),
    "pooling": ("frame", "channel"),  # attentive pooling: one weight per frame, or per frame and channel
    "time_stride": ("first", "late"),  # conv2d front end at subsample 2: which of its two layers strides in time
}
# Before a field existed, models behaved as these values say: a checkpoint's config that lacks a field
# was saved before it existed, and loads with these.
LEGACY = {"frontend": "conv1d", "frontend_channels": 64, "conv_norm": "layer", "position": "none",
          "aggregate": "last", "head": "am", "pooling": "frame", "time_stride": "first", "stats_norm": "none"}


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "conformer"  # one of KINDS: "conformer", "baseline" (the course sample) or "ecapa"
    input_norm: str = "global"
    n_mels: int = 40
    d_model: int = 144  # for kind "ecapa": its TDNN channels
    n_heads: int = 4
    n_layers: int = 3  # as much learned per step as 4 on the 31 speakers, in about 20 % less time
    ff_dim: int = 288  # feed-forward hidden size: twice d_model, a faster step that learned more at equal time than 4x
    conv_kernel: int = 15
    frontend: str = "conv2d"
    frontend_channels: int = 64  # conv2d front end only
    subsample: int = 2  # frames merged by the front end
    conv_norm: str = "batch"
    position: str = "none"
    aggregate: str = "mfa"
    pooling: str = "frame"
    time_stride: str = "first"
    stats_norm: str = "batch"  # as in ECAPA-TDNN: +5 points at 250 steps (bench/notes/2026-12-02-pooled-statistics-norm.md)
    dropout: float = 0.0  # none by default: at short budgets it did not help, and it costs ~28 % of a CPU step
    emb_dim: int = 192
    head: str = "am"
    scale: float = 30.0  # s
    margin: float = 0.2  # m
    # inference only: embed an utterance longer than this many frames as the mean of half-overlapping windows of
    # it (speaker_app.inference); 0: whole. The default model sets its training crop (training.default_model)
    window_frames: int = 0
    # inference only: an ensemble of this many independently trained models of this config (`Ensemble`), made
    # from trained checkpoints by training.ensemble; its embedding has members * emb_dim dimensions
    members: int = 1

    @property
    def embedding_size(self) -> int:
        """The dimensions of the embedding the model gives: `emb_dim`, or `members` of them for an ensemble."""
        return self.emb_dim * self.members

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("n_mels", "d_model", "n_heads", "n_layers", "ff_dim", "frontend_channels", "emb_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.subsample not in (1, 2, 4, 8) or (self.frontend == "conv2d" and self.subsample == 8):
            raise ValueError(f"subsample must be 1, 2, 4 or 8 (conv2d: at most 4), got {self.subsample}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.window_frames < 0:
            raise ValueError(f"window_frames must be 0 (whole utterances) or more, got {self.window_frames}")
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """A stored config (checkpoint, ONNX metadata); fields it lacks take their LEGACY values."""
        return from_dict(cls, {**LEGACY, **data})

    @classmethod
    def baseline(cls, n_mels: int = 40) -> ModelConfig:
        """The course sample: d_model 80, 2 heads, FFN 256, one post-norm layer, mean pooling, dropout 0.1."""
        return cls(kind="baseline", input_norm="none", n_mels=n_mels, d_model=80, n_heads=2, n_layers=1,
                   ff_dim=256, subsample=1, emb_dim=80, dropout=0.1)


class Intermediates(NamedTuple):
    logits: torch.Tensor  # (B, C), no margin
    embedding: torch.Tensor  # (B, E), unit norm
    attention: list[torch.Tensor]  # per layer (B, H, T', T')
    pooling: torch.Tensor  # (B, T') pooling weights over encoder frames
    lengths: torch.Tensor  # (B,) encoder frames per utterance
    frame_step: int  # input frames per encoder frame


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) mean over real frames -> (B, 1, D)."""
    weights = mask[..., None].to(x.dtype)
    return (x * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)


class SpeakerModel(nn.Module):
    """Shared interface: embed, forward (logits), forward_intermediates; a head for training.

    Global input statistics are buffers, so every checkpoint carries the ones it was trained with.
    Subclasses define `encode` (features -> frames, mask, attention maps) and `pool`, or
    override `_embed` as a whole.
    """

    frame_step: int = 1
    head: nn.Module

    def __init__(self, config: ModelConfig, n_speakers: int):
        super().__init__()
        if n_speakers < 1:
            raise ValueError(f"n_speakers must be at least 1, got {n_speakers}")
        self.config = config
        self.register_buffer("input_mean", torch.zeros(config.n_mels))
        self.register_buffer("input_std", torch.ones(config.n_mels))

    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor):
        """Per-mel-bin statistics of the training features, for input_norm='global'."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp(min=1e-3))

    def normalise(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) -> normalised features, zero on padding."""
        if self.config.input_norm == "global":
            features = (features - self.input_mean) / self.input_std
        elif self.config.input_norm == "cmn":  # removes gain and channel, and with them the spectral envelope
            features = features - masked_mean(features, mask)
        return features.masked_fill(~mask[..., None], 0.0)

    def margin_head(self, config: ModelConfig, n_speakers: int) -> MarginHead:
        return MarginHead(config.emb_dim, n_speakers, config.scale, config.margin, angular=config.head == "aam")

    def encode(self, features, lengths, return_weights=False):
        raise NotImplementedError

    def pool(self, x, mask):
        raise NotImplementedError

    def _check(self, features: torch.Tensor, lengths: torch.Tensor):
        if features.dim() != 3 or features.shape[-1] != self.config.n_mels:
            raise ValueError(f"features must be (B, T, {self.config.n_mels}), got {tuple(features.shape)}")
        # A graph being exported cannot read values (training.export): the ONNX adapter checks them instead.
        outside = not torch.compiler.is_exporting() and (
            int(lengths.min()) < 1 or int(lengths.max()) > features.shape[1])
        if lengths.shape != features.shape[:1] or outside:
            raise ValueError(f"lengths must be (B,) within [1, T={features.shape[1]}], got {lengths.tolist()}")

    def _embed(self, features, lengths, return_weights=False):
        """-> embeddings (B, E) before normalisation, attention maps, pooling weights (B, T'), lengths (B,)."""
        self._check(features, lengths)
        x, mask, attention = self.encode(features, lengths, return_weights)
        stats, pooling = self.pool(x, mask)
        return self.embedding(stats), attention, pooling, mask.sum(1)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels), (B,) -> (B, E) embeddings, before normalisation."""
        return self._embed(features, lengths)[0]

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, n_mels), (B,) -> (B, C) logits; the head's margin only when labels are given."""
        return self.head(self.embed(features, lengths), labels)

    def forward_intermediates(self, features: torch.Tensor, lengths: torch.Tensor) -> Intermediates:
        """Logits plus unit embedding, per-layer attention maps and pooling weights."""
        embedding, attention, pooling, enc_lengths = self._embed(features, lengths, return_weights=True)
        return Intermediates(self.head(embedding), F.normalize(embedding, dim=-1), attention,
                             pooling, enc_lengths, self.frame_step)


class SpeakerConformer(SpeakerModel):
    """Normalise -> convolutional front end -> Conformer blocks -> (every block's output, concatenated:
    multi-scale feature aggregation, Zhang et al. 2022) -> attentive statistics pooling -> embedding
    -> margin head."""

    def __init__(self, config: ModelConfig, n_speakers: int):
        super().__init__(config, n_speakers)
        self.frame_step = config.subsample
        d = config.d_model
        if config.frontend == "conv2d":
            self.frontend = Subsampling2d(config.n_mels, d, config.subsample, config.frontend_channels,
                                          config.time_stride == "late")
        else:
            self.frontend = Subsampling(config.n_mels, d, config.subsample)
        self.blocks = nn.ModuleList(
            ConformerBlock(d, config.n_heads, config.ff_dim, config.conv_kernel, config.dropout,
                           config.conv_norm, config.position == "rotary")
            for _ in range(config.n_layers)
        )
        every_block = config.aggregate != "last"
        pooled = d * config.n_layers if every_block else d
        self.aggregate_norm = nn.LayerNorm(pooled) if every_block else nn.Identity()
        if config.aggregate == "mfa-dense":
            self.aggregate_dense = nn.Linear(pooled, pooled)
            self.aggregate_dense_norm = MaskedBatchNorm(pooled)
        self.stats_norm = MaskedBatchNorm(2 * pooled) if config.stats_norm == "batch" else None
        pooling = ChannelAttentiveStatsPooling if config.pooling == "channel" else AttentiveStatsPooling
        self.pooling = pooling(pooled, hidden=d)
        self.embedding = nn.Linear(2 * pooled, config.emb_dim)
        self.head = self.margin_head(config, n_speakers)

    def encode(self, features, lengths, return_weights=False):
        """(B, T, n_mels) -> (B, T', D) or, aggregated, (B, T', n_layers * D); mask (B, T'); attention maps."""
        mask = padding_mask(lengths, features.shape[1])
        x = self.normalise(features, mask)
        x, mask = self.frontend(x, mask)  # (B, T', D)
        outputs, attention = [], []
        for block in self.blocks:
            x, weights = block(x, mask, return_weights)
            outputs.append(x)
            attention.append(weights)
        if self.config.aggregate != "last":
            x = self.aggregate_norm(torch.cat(outputs, dim=-1))  # (B, T', L * D)
        if self.config.aggregate == "mfa-dense":
            x = self.aggregate_dense_norm(F.relu(self.aggregate_dense(x)), mask)
        return x, mask, attention if return_weights else []

    def pool(self, x, mask):
        stats, weights = self.pooling(x, mask)
        if self.stats_norm is not None:  # one "frame" per utterance: batch statistics over the utterances
            stats = self.stats_norm(stats[:, None], torch.ones_like(stats[:, :1], dtype=torch.bool))[:, 0]
        return stats, weights


class BaselineTransformer(SpeakerModel):
    """The course's sample model: Linear 40->80, one post-norm transformer layer, mean pooling."""

    def __init__(self, config: ModelConfig, n_speakers: int):
        super().__init__(config, n_speakers)
        d = config.d_model
        self.prenet = nn.Linear(config.n_mels, d)
        self.attn = SelfAttention(d, config.n_heads, config.dropout)
        self.ff = nn.Sequential(nn.Linear(d, config.ff_dim), nn.ReLU(), nn.Dropout(config.dropout),
                                nn.Linear(config.ff_dim, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)
        self.embedding = nn.Identity()
        self.head = LinearHead(d, n_speakers)

    def encode(self, features, lengths, return_weights=False):
        mask = padding_mask(lengths, features.shape[1])
        x = self.prenet(self.normalise(features, mask))
        y, weights = self.attn(x, mask, return_weights)
        x = self.norm1(x + self.dropout(y))  # post-norm, as torch's TransformerEncoderLayer
        x = self.norm2(x + self.dropout(self.ff(x)))
        return x, mask, [weights] if return_weights else []

    def pool(self, x, mask):
        weights = mask.to(x.dtype) / mask.sum(1, keepdim=True)  # mean pooling as uniform weights
        return torch.einsum("bt,btd->bd", weights, x), weights


class EnsembleHead(nn.Module):
    """The members' margin heads as one over the ensemble's embedding, without a margin (inference only):
    class c's vector is the members' unit vectors of c concatenated and scaled by 1/sqrt(k), so the cosine
    of an ensemble embedding with it is the mean of the members' cosines. Its weights stay the members'."""

    def __init__(self, members: nn.ModuleList, scale: float):
        super().__init__()
        self._members = [members]  # in a list, so that the members' weights are not registered a second time
        self.scale = scale

    @property
    def weight(self) -> torch.Tensor:
        members = self._members[0]
        return torch.cat([F.normalize(m.head.weight, dim=-1) for m in members], -1) / math.sqrt(len(members))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:
            raise ValueError("an ensemble is not trained: train its members, then assemble them (training.ensemble)")
        return self.scale * F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T


class Ensemble(nn.Module):
    """Independently trained models of one config (`config.members` of them) answering as one.

    The embedding is the members' unit embeddings concatenated and scaled by 1/sqrt(k): itself of unit
    norm, so that the cosine of two is the mean of the members' cosines. Independent runs err on
    different clips, so their mean score sets voices apart better than any one of them
    (bench/notes/2026-12-06-ensembles.md). Attention maps and pooling weights are the first member's.
    """

    def __init__(self, config: ModelConfig, members: list[SpeakerModel]):
        """`members`: `config.members` networks of the config with `members=1` (`registry.build_model`
        builds them)."""
        super().__init__()
        if len(members) != config.members:
            raise ValueError(f"an ensemble of {config.members} members got {len(members)}")
        self.config = config
        self.members = nn.ModuleList(members)
        self.frame_step = self.members[0].frame_step
        self.head = EnsembleHead(self.members, config.scale)

    def _joined(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.normalize(e, dim=-1) for e in embeddings], -1) / math.sqrt(len(embeddings))

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels), (B,) -> (B, k * E), of unit norm."""
        return self._joined([m.embed(features, lengths) for m in self.members])

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.embed(features, lengths), labels)

    def forward_intermediates(self, features: torch.Tensor, lengths: torch.Tensor) -> Intermediates:
        first = self.members[0].forward_intermediates(features, lengths)
        embedding = self._joined([first.embedding, *(m.embed(features, lengths) for m in self.members[1:])])
        return first._replace(logits=self.head(embedding), embedding=embedding)
