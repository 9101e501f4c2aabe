"""The linear datamodeling score's parts: subsets, predictions, correlations with intervals."""
import numpy as np
import pytest

from cleansing.lds import check_lds, correlations, lds_subsets, predicted_changes


def test_subsets_are_seeded_sized_and_shared():
    a = lds_subsets(101, 5, 0.5, seed=3)
    assert a.shape == (5, 101) and a.dtype == bool
    assert list(a.sum(axis=1)) == [51] * 5  # round(0.5 * 101) = 50.5 -> 51
    assert np.array_equal(a, lds_subsets(101, 5, 0.5, seed=3))          # reruns and every method
    assert np.array_equal(a[:3], lds_subsets(101, 3, 0.5, seed=3))      # more subsets extend, never reshuffle
    assert not np.array_equal(a, lds_subsets(101, 5, 0.5, seed=4))
    assert len({row.tobytes() for row in a}) == 5


def test_predicted_change_sums_the_removed_scores():
    kept = np.array([[True, False, True, False], [False, False, True, True]])
    assert list(predicted_changes(np.array([1.0, 2.0, 4.0, 8.0]), kept)) == [10.0, 3.0]


def test_correlations_and_their_intervals():
    x = np.arange(20.0)
    perfect = correlations(x, 3 * x + 1)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["pearson"] == pytest.approx(1.0)
    assert perfect["spearman_low"] == pytest.approx(1.0) and perfect["pearson_high"] == pytest.approx(1.0)
    flipped = correlations(x, -x)
    assert flipped["spearman"] == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(200), rng.standard_normal(200)
    noise = correlations(a, b)
    assert noise["spearman_low"] < 0 < noise["spearman_high"] and abs(noise["spearman"]) < 0.15
    assert correlations(a, b) == noise  # the bootstrap is seeded: the same bytes on a rerun


def test_bad_lds_settings_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"--lds 1: LDS needs at least 2 subsets"):
        check_lds(1, 0.5)
    for f in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"--lds-fraction .* must be between 0 and 1"):
            check_lds(10, f)
    assert check_lds(2, 0.5) == (2, 0.5)
