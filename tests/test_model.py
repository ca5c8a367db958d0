import pytest
import torch

from speaker_app.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from speaker_app.features import FeatureConfig
from speaker_app.model import KINDS, MarginHead, ModelConfig
from speaker_app.registry import MODELS, build_model

SMALL = ModelConfig(d_model=32, n_heads=4, n_layers=2, ff_dim=64, emb_dim=24, conv_kernel=5, subsample=4)
CONFIGS = {
    "conformer": SMALL,
    "conformer-sub1": ModelConfig(d_model=32, n_heads=2, n_layers=1, ff_dim=64, emb_dim=16, subsample=1),
    "conformer-channel-pooling-late-stride": ModelConfig(d_model=32, n_heads=4, n_layers=2, ff_dim=64, emb_dim=24,
                                                         conv_kernel=5, pooling="channel", time_stride="late"),
    "conformer-mfa-dense-stats-norm": ModelConfig(d_model=32, n_heads=4, n_layers=2, ff_dim=64, emb_dim=24,
                                                  conv_kernel=5, aggregate="mfa-dense", stats_norm="batch"),
    "baseline": ModelConfig.baseline(),
}
N_SPEAKERS = 7


@pytest.fixture(params=list(CONFIGS), ids=list(CONFIGS))
def model(request):
    torch.manual_seed(0)
    return build_model(CONFIGS[request.param], N_SPEAKERS)


def batch(lengths=(50, 37, 9, 1)):
    torch.manual_seed(1)
    lengths = torch.tensor(lengths)
    features = torch.randn(len(lengths), int(lengths.max()), 40) * 3 - 5
    return features, lengths


def test_shapes_and_finite(model):
    model.eval()
    features, lengths = batch()
    out = model.forward_intermediates(features, lengths)
    assert out.logits.shape == (4, N_SPEAKERS)
    assert out.embedding.shape == (4, model.config.emb_dim)
    assert len(out.attention) == model.config.n_layers
    T = out.pooling.shape[1]
    assert all(a.shape == (4, model.config.n_heads, T, T) for a in out.attention)
    assert out.lengths.tolist() == [(n - 1) // out.frame_step + 1 for n in lengths.tolist()]
    for tensor in [out.logits, out.embedding, out.pooling, *out.attention]:
        assert torch.isfinite(tensor).all()
    # Attention and pooling put no weight on padding and sum to one over real frames.
    real = torch.arange(T)[None, :] < out.lengths[:, None]
    assert torch.allclose(out.pooling.sum(-1), torch.ones(4))
    assert (out.pooling[~real] == 0).all()
    for maps in out.attention:
        assert (maps.masked_select(~real[:, None, None, :]) == 0).all()
        assert torch.allclose(maps.sum(-1), torch.ones_like(maps.sum(-1)))


SHIFT_INVARIANT = {"pooling.score.2.bias"}


def test_every_parameter_gets_a_gradient(model):
    features, lengths = batch()
    labels = torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(features, lengths, labels), labels).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        # The pooling score's last bias shifts every frame's score alike, which the softmax over
        # time ignores: its gradient is zero but for rounding (exactly zero in some builds).
        if name not in SHIFT_INVARIANT:
            assert parameter.grad.abs().sum() > 0, name


def test_padded_batch_equals_one_at_a_time(model):
    model.eval()
    features, lengths = batch()
    together = model.forward_intermediates(features, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = model.forward_intermediates(features[i:i + 1, :n], lengths[i:i + 1])
        assert torch.allclose(together.logits[i], alone.logits[0], atol=1e-4)
        assert torch.allclose(together.embedding[i], alone.embedding[0], atol=1e-5)
        t = int(alone.lengths[0])
        assert torch.allclose(together.pooling[i, :t], alone.pooling[0], atol=1e-5)
        assert torch.allclose(together.attention[-1][i, :, :t, :t], alone.attention[-1][0], atol=1e-5)


def test_padding_values_do_not_matter(model):
    model.eval()
    features, lengths = batch()
    noisy = features.clone()
    for i, n in enumerate(lengths.tolist()):
        noisy[i, n:] = -20.0  # the course code pads with -20
    assert torch.allclose(model(features, lengths), model(noisy, lengths), atol=1e-5)


def test_embeddings_unit_norm_and_logits_bounded():
    model = build_model(SMALL, N_SPEAKERS).eval()
    features, lengths = batch()
    out = model.forward_intermediates(features * 50, lengths)
    assert torch.allclose(out.embedding.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert out.logits.abs().max() <= SMALL.scale + 1e-4
    labels = torch.tensor([0, 1, 2, 3])
    with_margin = model(features * 50, lengths, labels)
    assert with_margin.min() >= -SMALL.scale - SMALL.scale * SMALL.margin - 1e-4


def test_am_softmax_normalises_class_weights_and_applies_margin_to_target_only():
    head = MarginHead(8, 5, scale=30.0, margin=0.2)
    embeddings = torch.randn(3, 8)
    before = head(embeddings)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([1.0, 5.0, 0.1, 2.0, 30.0])[:, None])  # rescale class vectors
    assert torch.allclose(head(embeddings), before, atol=1e-5)
    assert torch.allclose(head(embeddings * 7), before, atol=1e-5)
    labels = torch.tensor([4, 0, 2])
    delta = before - head(embeddings, labels)
    expected = torch.zeros(3, 5)
    expected[torch.arange(3), labels] = 30.0 * 0.2
    assert torch.allclose(delta, expected, atol=1e-5)


def test_save_load_gives_identical_outputs(model, tmp_path):
    model.eval()
    features, lengths = batch()
    speakers = [f"spk{i}" for i in range(N_SPEAKERS)]
    checkpoint = Checkpoint(model.config, FeatureConfig(), speakers,
                            {k: v.clone() for k, v in model.state_dict().items()}, step=5)
    save_checkpoint(checkpoint, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.speakers == speakers and loaded.step == 5 and loaded.model_config == model.config
    assert torch.equal(loaded.build_model()(features, lengths), model(features, lengths))


def test_a_checkpoint_saved_before_a_config_field_existed_loads_as_it_was_trained(tmp_path):
    # checkpoints/default.pt and its kind were saved before stats_norm, pooling and time_stride existed
    torch.manual_seed(0)
    before = ModelConfig(d_model=32, n_heads=4, n_layers=2, ff_dim=64, emb_dim=24, conv_kernel=5, stats_norm="none")
    model = build_model(before, N_SPEAKERS).eval()
    checkpoint = Checkpoint(before, FeatureConfig(), [f"spk{i}" for i in range(N_SPEAKERS)], model.state_dict())
    data = checkpoint.to_dict()
    for field in ("stats_norm", "pooling", "time_stride"):
        del data["model_config"][field]
    torch.save(data, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.model_config == before and ModelConfig().stats_norm != before.stats_norm
    features, lengths = batch()
    assert torch.equal(loaded.build_model()(features, lengths), model(features, lengths))


def test_ecapa_kind_comes_from_the_registry_and_its_checkpoint_loads(tmp_path):
    pytest.importorskip("speechbrain", reason="the ecapa kind needs speechbrain, a bench-only dependency")
    from speaker_app.ecapa import EcapaSpeaker, ecapa_config

    config = ecapa_config(channels=16)
    torch.manual_seed(0)
    model = build_model(config, N_SPEAKERS).eval()
    assert isinstance(model, EcapaSpeaker)
    features, lengths = batch()
    speakers = [f"spk{i}" for i in range(N_SPEAKERS)]
    save_checkpoint(Checkpoint(config, FeatureConfig(), speakers, model.state_dict()), tmp_path / "ecapa.pt")
    loaded = load_checkpoint(tmp_path / "ecapa.pt").build_model()
    assert isinstance(loaded, EcapaSpeaker) and loaded.config.kind == "ecapa"
    assert torch.equal(loaded(features, lengths), model(features, lengths))


def test_the_registry_builds_every_kind_a_config_accepts():
    assert set(MODELS) == set(KINDS)
    for kind in set(KINDS) - {"ecapa"}:  # ecapa needs speechbrain: the test above
        config = ModelConfig.baseline() if kind == "baseline" else SMALL
        assert build_model(config, N_SPEAKERS).config.kind == kind


@pytest.mark.parametrize("bad", [dict(d_model=30, n_heads=4), dict(conv_kernel=4), dict(kind="lstm"),
                                 dict(dropout=1.0), dict(subsample=3), dict(margin=1.5), dict(n_layers=0)])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        build_model(ModelConfig(**{**SMALL.to_dict(), **bad}), N_SPEAKERS)


def test_bad_inputs_are_rejected():
    model = build_model(SMALL, N_SPEAKERS)
    with pytest.raises(ValueError, match="features must be"):
        model(torch.zeros(2, 10, 80), torch.tensor([10, 10]))
    with pytest.raises(ValueError, match="lengths"):
        model(torch.zeros(2, 10, 40), torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="n_speakers"):
        build_model(SMALL, 0)
