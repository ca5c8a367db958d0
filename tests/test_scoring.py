"""Error rates at unique thresholds, minDCF, and adaptive s-norm against a cohort."""

import pytest
import torch

from speaker_app.scoring import Scorer, cosine, equal_error_rate, min_dcf, operating_points


def test_tied_scores_cannot_fake_a_perfect_operating_point():
    same = torch.arange(10) % 2 == 0
    eer, threshold = equal_error_rate(torch.full((10,), 0.3), same)
    assert eer == 0.5  # accept all or none: nothing in between
    assert min_dcf(torch.full((10,), 0.3), same)[0] == 1.0  # no better than always rejecting
    # One target above a tie of a target and a non-target: the tie is accepted or rejected as a whole.
    eer, threshold = equal_error_rate(torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([1, 1, 0, 0]))
    assert eer == 0.25 and 0.5 < threshold < 0.9


def test_equal_error_rate_and_threshold():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    same = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])
    eer, threshold = equal_error_rate(scores, same)
    assert eer == pytest.approx(0.25) and threshold == pytest.approx(0.55)
    assert equal_error_rate(scores, scores > 0.55) == (0.0, pytest.approx(0.55))


def test_min_dcf_by_hand():
    scores, same = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])
    # p_target 0.5: normalised cost = P_miss + P_fa; accepting only 0.9 gives 0.5 + 0, the best there is.
    assert min_dcf(scores, same, p_target=0.5) == (pytest.approx(0.5), pytest.approx(0.85))
    # p_target 0.01 makes false accepts 99 times as costly: the same point, 0.01 * 0.5 / 0.01.
    assert min_dcf(scores, same)[0] == pytest.approx(0.5)
    assert min_dcf(scores, scores > 0.75)[0] == 0.0
    with pytest.raises(ValueError, match="p_target"):
        min_dcf(scores, same, p_target=1.0)


def test_each_operating_point_is_what_its_threshold_does():
    generator = torch.Generator().manual_seed(0)
    scores = (torch.randn(300, generator=generator) * 4).round() / 4  # many ties
    same = torch.rand(300, generator=generator) < 0.3
    points = operating_points(scores, same)
    assert points.false_accept[0] == 0 and points.false_reject[0] == 1
    assert points.false_accept[-1] == 1 and points.false_reject[-1] == 0
    assert len(points.thresholds) == len(scores.unique()) + 1
    for threshold, fa, fr in zip(*points):
        accepted = scores.double() >= threshold
        assert float(accepted[~same].float().mean()) == pytest.approx(float(fa))
        assert float((~accepted[same]).float().mean()) == pytest.approx(float(fr))


def test_error_rates_need_both_kinds_of_trial():
    with pytest.raises(ValueError, match="both"):
        equal_error_rate(torch.rand(5), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="finite"):
        min_dcf(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))


def test_as_norm_is_the_mean_of_two_z_scores_over_top_k_cohort_scores():
    generator = torch.Generator().manual_seed(0)
    cohort, left, right = (torch.randn(n, 8, generator=generator) for n in (20, 3, 4))
    scorer = Scorer(cohort, top_k=5)
    expected = torch.empty(3, 4)
    for i in range(3):
        for j in range(4):
            a = cosine(left[i:i + 1], cohort)[0].topk(5).values
            b = cosine(right[j:j + 1], cohort)[0].topk(5).values
            raw = cosine(left[i:i + 1], right[j:j + 1])[0, 0]
            expected[i, j] = ((raw - a.mean()) / a.std() + (raw - b.mean()) / b.std()) / 2
    assert torch.allclose(scorer.score(left, right), expected, atol=1e-5)
    assert torch.allclose(scorer.score(left, right, scorer.stats(left), scorer.stats(right)), expected, atol=1e-5)
    assert scorer.kind == "as-norm" and Scorer(cohort, top_k=500).top_k == 20


def test_each_speakers_trials_take_the_other_speakers_enrollment_clips_into_the_cohort():
    generator = torch.Generator().manual_seed(1)
    cohort, clips, speakers, enrolled = (torch.randn(n, 8, generator=generator) for n in (20, 4, 3, 5))
    owners = torch.tensor([0, 0, 1, 1, -1])  # speaker 2 has no clips here (a known speaker's prototype)
    scorer = Scorer(cohort, top_k=6)
    scores = scorer.score_speakers(clips, speakers, enrolled, owners)
    for j in range(3):
        others = Scorer(torch.cat([cohort, enrolled[owners != j]]), top_k=6)
        assert torch.allclose(scores[:, j], others.score(clips, speakers[j:j + 1])[:, 0], atol=1e-5)
    assert not torch.allclose(scores, scorer.score(clips, speakers), atol=1e-3)
    assert torch.equal(scorer.score_speakers(clips, speakers), scorer.score(clips, speakers))
    moved = enrolled.clone()
    moved[:2] = torch.randn(2, 8, generator=generator)  # speaker 0's own clips never touch its column
    assert torch.allclose(scorer.score_speakers(clips, speakers, moved, owners)[:, 0], scores[:, 0], atol=1e-6)
    assert torch.equal(Scorer(None).score_speakers(clips, speakers, enrolled, owners), cosine(clips, speakers))
    with pytest.raises(ValueError, match="one column per enrollment clip"):
        scorer.score_speakers(clips, speakers, enrolled, owners[:3])


def test_without_a_cohort_scores_are_cosines():
    a, b = torch.randn(3, 8), torch.randn(5, 8)
    scorer = Scorer(None)
    assert scorer.kind == "cosine" and scorer.stats(a) is None
    assert torch.equal(scorer.score(a, b), cosine(a, b))


@pytest.mark.parametrize("cohort, top_k, message", [
    (torch.randn(8), 5, "K, E"), (torch.randn(1, 8), 5, "K >= 2"), (torch.randn(10, 8), 1, "top_k >= 2")])
def test_bad_cohorts_are_refused(cohort, top_k, message):
    with pytest.raises(ValueError, match=message):
        Scorer(cohort, top_k)
