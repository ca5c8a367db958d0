"""SpeechBrain's ECAPA-TDNN with our AM-softmax head, trained by our own training loop.

    python -m bench.ecapa --data DIR --out RUN_DIR [any training.train flag]

`EcapaSpeaker` has the interface the loop and `speaker_app.inference.infer` use
(`embed`, `forward(features, lengths, labels)`, `head`), so the ECAPA runs of the
benchmark go through `training.train.main` itself: same data path (FeatureBank
crops), augmentation, optimizer, schedule, steps, batch, validation and
checkpoints; only the network differs. The checkpoint's `model_config` is the
resolved TrainConfig's (it supplies n_mels, emb_dim, s and m); the weights are
ECAPA's, so load them with `load_ecapa`, not `Checkpoint.build_model`.
"""

from __future__ import annotations

import sys

import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from speaker_app.checkpoint import Checkpoint
from speaker_app.model import AMSoftmaxHead, ModelConfig, SpeakerModel, padding_mask

# 264 channels (divisible by res2net_scale 8) give 2.09 M encoder parameters, the
# nearest to our default Conformer's 2.14 M; the last layer has 3x, as in the paper.
CHANNELS = 264


class EcapaSpeaker(SpeakerModel):
    """Input normalisation -> ECAPA-TDNN embedding (Desplanques et al. 2020) -> AM-softmax head.

    The input normalisation is SpeakerModel's (config.input_norm, global statistics by
    default), as for our Conformer; SpeakerModel's `forward` adds the head.
    """

    def __init__(self, config: ModelConfig, n_speakers: int, channels: int = CHANNELS):
        super().__init__(config, n_speakers)
        if channels % 8:
            raise ValueError(f"channels must be divisible by the Res2Net scale 8, got {channels}")
        self.encoder = ECAPA_TDNN(config.n_mels, lin_neurons=config.emb_dim, channels=[channels] * 4 + [3 * channels])
        self.head = AMSoftmaxHead(config.emb_dim, n_speakers, config.scale, config.margin)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels), (B,) -> (B, E) embeddings, before normalisation."""
        self._check(features, lengths)
        x = self.normalise(features, padding_mask(lengths, features.shape[1]))
        relative = lengths.to(x.dtype) / features.shape[1]  # SpeechBrain takes lengths relative to T
        return self.encoder(x, relative).squeeze(1)  # (B, 1, E) -> (B, E)


def build_ecapa(config: ModelConfig, n_speakers: int) -> EcapaSpeaker:
    return EcapaSpeaker(config, n_speakers)


def load_ecapa(checkpoint: Checkpoint) -> EcapaSpeaker:
    model = build_ecapa(checkpoint.model_config, len(checkpoint.speakers))
    model.load_state_dict(checkpoint.state_dict)
    return model.eval()


def main(argv=None) -> int:
    from training import train

    train.build_model = build_ecapa  # the one line that differs from `python -m training.train`
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
