"""Every kind of network, built by `ModelConfig.kind`: the one place that knows them all.

    model = build_model(checkpoint.model_config, len(checkpoint.speakers))

`speaker_app.model` defines our Conformer and the course's sample transformer, `speaker_app.ecapa` the
benchmarks' peer (ECAPA-TDNN, on top of the model's shared parts); this module imports both, so that
imports go one way. A config with `members` > 1 builds an `Ensemble` of that many networks of its kind.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .ecapa import EcapaSpeaker  # speechbrain itself is imported only when an "ecapa" network is built
from .model import BaselineTransformer, Ensemble, ModelConfig, SpeakerConformer, SpeakerModel

MODELS: dict[str, Callable[[ModelConfig, int], SpeakerModel]] = {
    "conformer": SpeakerConformer,
    "baseline": BaselineTransformer,
    "ecapa": EcapaSpeaker,
}  # ModelConfig accepts exactly these kinds (model.KINDS; tests/test_model.py checks it)


def build_model(config: ModelConfig, n_speakers: int) -> SpeakerModel | Ensemble:
    if config.members > 1:
        single = replace(config, members=1)
        return Ensemble(config, [MODELS[config.kind](single, n_speakers) for _ in range(config.members)])
    return MODELS[config.kind](config, n_speakers)
