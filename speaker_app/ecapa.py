"""ECAPA-TDNN (Desplanques et al. 2020), SpeechBrain's implementation, as model kind "ecapa": the peer
the benchmarks compare with. It needs speechbrain, a benchmark-only dependency (bench/requirements.txt).

The network sits behind the same input normalisation and margin head as our Conformer, so the training
loop, inference and checkpoints treat it like any other kind. `ModelConfig.d_model` is its channel
count (the last layer has three times as many, as in the paper).
"""

from __future__ import annotations


from .model import ModelConfig, SpeakerModel, padding_mask


class EcapaSpeaker(SpeakerModel):
    """Input normalisation -> ECAPA-TDNN embedding -> margin head."""

    def __init__(self, config: ModelConfig, n_speakers: int):
        super().__init__(config, n_speakers)
        try:
            from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
        except ImportError:
            raise ValueError("model kind 'ecapa' needs speechbrain: pip install -r bench/requirements.txt") from None
        if config.d_model % 8:
            raise ValueError(f"ecapa channels (d_model) must be divisible by the Res2Net scale 8, got {config.d_model}")
        channels = config.d_model
        self.encoder = ECAPA_TDNN(config.n_mels, lin_neurons=config.emb_dim, channels=[channels] * 4 + [3 * channels])
        self.head = self.margin_head(config, n_speakers)

    def _embed(self, features, lengths, return_weights=False):
        """-> embeddings (B, E), no attention maps, uniform pooling weights (B, T), lengths (B,)."""
        self._check(features, lengths)
        mask = padding_mask(lengths, features.shape[1])
        x = self.normalise(features, mask)
        relative = lengths.to(x.dtype) / features.shape[1]  # SpeechBrain takes lengths relative to T
        embedding = self.encoder(x, relative).squeeze(1)  # (B, 1, E) -> (B, E)
        uniform = mask.to(embedding.dtype) / lengths[:, None].to(embedding.dtype)
        return embedding, [], uniform, lengths


def ecapa_config(n_mels: int = 40, channels: int = 264) -> ModelConfig:
    """264 channels (divisible by the Res2Net scale 8) give 2.09 M encoder parameters, the nearest
    to our default Conformer's size."""
    return ModelConfig(kind="ecapa", n_mels=n_mels, d_model=channels)
