"""Speaker classifiers on (B, T, n_mels) log-mel features.

Reads top-down: the parts (feed-forward, self-attention, convolution module,
Conformer block, attentive pooling, margin head), then `ModelConfig`, then the
networks: `SpeakerConformer` and the course's sample `BaselineTransformer`.

Lengths travel with the features: padding is masked in attention, in the
depthwise convolution and in the pooling softmax, so a padded batch gives the
same outputs as one utterance at a time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


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


class SelfAttention(nn.Module):
    """Multi-head self-attention over (B, T, D) with a key padding mask."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"d_model ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_weights: bool = False):
        """x (B, T, D), mask (B, T) -> (B, T, D), and (B, H, T, T) weights if asked."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
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


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, norm, Swish, pointwise conv.

    Padding is zeroed before the depthwise convolution so it cannot leak into
    real frames; LayerNorm (not BatchNorm) keeps each utterance independent.
    """

    def __init__(self, dim: int, kernel_size: int, dropout: float):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, got {kernel_size}")
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.depthwise_norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.pointwise_in(self.norm(x)), dim=-1)  # (B, T, D)
        x = x.masked_fill(~mask[..., None], 0.0)
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)  # (B, D, T) for Conv1d
        x = self.pointwise_out(F.silu(self.depthwise_norm(x)))
        return self.dropout(x)


class Subsampling(nn.Module):
    """A linear projection, then stride-2 convolutions (kernel 3) until time is `factor` times shorter."""

    def __init__(self, n_mels: int, dim: int, factor: int):
        super().__init__()
        if factor not in (1, 2, 4, 8):
            raise ValueError(f"subsample must be 1, 2, 4 or 8, got {factor}")
        self.project = nn.Linear(n_mels, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 3, stride=2, padding=1) for _ in range(factor.bit_length() - 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """(B, T, n_mels), mask (B, T) -> (B, T', D), mask (B, T')."""
        x = self.project(x)
        lengths = mask.sum(1)
        for conv in self.convs:
            x = x.masked_fill(~mask[..., None], 0.0)  # padding must read as the zeros a lone utterance sees
            x = F.silu(conv(x.transpose(1, 2))).transpose(1, 2)  # Conv1d wants (B, D, T)
            lengths = (lengths - 1) // 2 + 1
            mask = padding_mask(lengths, x.shape[1])
        return x, mask


class ConformerBlock(nn.Module):
    """Macaron FF/2 -> self-attention -> convolution -> FF/2 -> LayerNorm (Gulati et al. 2020)."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, kernel_size: int, dropout: float):
        super().__init__()
        self.ff1 = FeedForward(dim, ff_dim, dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(dim, kernel_size, dropout)
        self.ff2 = FeedForward(dim, ff_dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_weights: bool = False):
        x = x + 0.5 * self.ff1(x)
        y, weights = self.attn(self.attn_norm(x), mask, return_weights)
        x = x + self.attn_dropout(y)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x), weights


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over time (Okabe et al. 2018)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """x (B, T, D), mask (B, T) -> stats (B, 2D), weights (B, T) summing to 1 over real frames."""
        scores = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)  # (B, T)
        mean = torch.einsum("bt,btd->bd", weights, x)
        var = torch.einsum("bt,btd->bd", weights, x * x) - mean * mean
        std = var.clamp(min=1e-5).sqrt()
        return torch.cat([mean, std], dim=-1), weights


class AMSoftmaxHead(nn.Module):
    """Additive-margin softmax (Wang et al. 2018): logits = s * (cos(theta) - m at the target).

    Both embeddings and class weights are L2-normalised, so logits lie in
    [-s, s]. The margin is subtracted only when labels are given (training).
    """

    def __init__(self, emb_dim: int, n_classes: int, scale: float, margin: float):
        super().__init__()
        if scale <= 0 or not 0 <= margin < 1:
            raise ValueError(f"need scale s > 0 and 0 <= margin m < 1, got s={scale}, m={margin}")
        self.weight = nn.Parameter(torch.randn(n_classes, emb_dim) * 0.01)
        self.scale = scale
        self.margin = margin

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T  # (B, C)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = self.cosine(embeddings)
        if labels is not None:
            cosine = cosine - self.margin * F.one_hot(labels, cosine.shape[-1]).to(cosine.dtype)
        return self.scale * cosine


class LinearHead(nn.Module):
    """The course baseline's Linear-ReLU-Linear classifier (labels are ignored)."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, n_classes))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(embeddings)


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "conformer"  # or "baseline": the course's sample transformer
    input_norm: str = "global"  # "global": per-bin statistics of the training data; "cmn": per utterance; "none"
    n_mels: int = 40
    d_model: int = 144
    n_heads: int = 4
    n_layers: int = 4
    ff_dim: int = 576  # feed-forward hidden size
    conv_kernel: int = 15
    subsample: int = 4  # frames merged by the strided input convolutions
    dropout: float = 0.1
    emb_dim: int = 192
    scale: float = 30.0  # AM-softmax s
    margin: float = 0.2  # AM-softmax m

    def __post_init__(self):
        if self.kind not in ("conformer", "baseline"):
            raise ValueError(f"model kind must be 'conformer' or 'baseline', got {self.kind!r}")
        if self.input_norm not in ("global", "cmn", "none"):
            raise ValueError(f"input_norm must be 'global', 'cmn' or 'none', got {self.input_norm!r}")
        for name in ("n_mels", "d_model", "n_heads", "n_layers", "ff_dim", "subsample", "emb_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def baseline(cls, n_mels: int = 40) -> ModelConfig:
        """The course sample: d_model 80, 2 heads, FFN 256, one post-norm layer, mean pooling."""
        return cls(kind="baseline", input_norm="none", n_mels=n_mels, d_model=80, n_heads=2, n_layers=1,
                   ff_dim=256, subsample=1, emb_dim=80)


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

    def encode(self, features, lengths, return_weights=False):
        raise NotImplementedError

    def pool(self, x, mask):
        raise NotImplementedError

    def _check(self, features: torch.Tensor, lengths: torch.Tensor):
        if features.dim() != 3 or features.shape[-1] != self.config.n_mels:
            raise ValueError(f"features must be (B, T, {self.config.n_mels}), got {tuple(features.shape)}")
        if lengths.shape != features.shape[:1] or int(lengths.min()) < 1 or int(lengths.max()) > features.shape[1]:
            raise ValueError(f"lengths must be (B,) within [1, T={features.shape[1]}], got {lengths.tolist()}")

    def _embed(self, features, lengths, return_weights=False):
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
    """Normalise -> strided conv -> Conformer blocks -> attentive statistics pooling -> embedding -> AM-softmax."""

    def __init__(self, config: ModelConfig, n_speakers: int):
        super().__init__(config, n_speakers)
        self.frame_step = config.subsample
        d = config.d_model
        self.frontend = Subsampling(config.n_mels, d, config.subsample)
        self.blocks = nn.ModuleList(
            ConformerBlock(d, config.n_heads, config.ff_dim, config.conv_kernel, config.dropout)
            for _ in range(config.n_layers)
        )
        self.pooling = AttentiveStatsPooling(d, hidden=d)
        self.embedding = nn.Linear(2 * d, config.emb_dim)
        self.head = AMSoftmaxHead(config.emb_dim, n_speakers, config.scale, config.margin)

    def encode(self, features, lengths, return_weights=False):
        """(B, T, n_mels) -> (B, T', D), mask (B, T'), attention maps."""
        mask = padding_mask(lengths, features.shape[1])
        x = self.normalise(features, mask)
        x, mask = self.frontend(x, mask)  # (B, T', D)
        attention = []
        for block in self.blocks:
            x, weights = block(x, mask, return_weights)
            attention.append(weights)
        return x, mask, attention if return_weights else []

    def pool(self, x, mask):
        return self.pooling(x, mask)


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


def build_model(config: ModelConfig, n_speakers: int) -> SpeakerModel:
    network = SpeakerConformer if config.kind == "conformer" else BaselineTransformer
    return network(config, n_speakers)
