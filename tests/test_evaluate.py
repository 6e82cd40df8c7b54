import math

import pytest

from mirror_sfm.evaluate import ap_at_k, ap_mirror, mean_average_precision


def test_ap_mirror_by_hand():
    # ranked: rel, non, rel; |GT| = 2. Points (R, P): (0.5, 1), (0.5, 0.5), (1, 2/3); P0 = 1
    # AP = 0.5 * (1 + 1) / 2 + 0 + 0.5 * (0.5 + 2/3) / 2 = 0.5 + 0.291666...
    assert ap_mirror(["a", "x", "b"], {"a", "b"}) == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)


def test_ap_mirror_counts_missed_gt_in_recall():
    # only 1 of 4 relevant retrieved, at rank 1: R goes 0 -> 0.25 at P = 1
    assert ap_mirror(["a", "x"], {"a", "b", "c", "d"}) == pytest.approx(0.25)


def test_ap_at_k_by_hand():
    # rel at ranks 1 and 3 of k = 3, |GT| = 2: (1/1 + 2/3) / 2
    assert ap_at_k(["a", "x", "b"], {"a", "b"}, 3) == pytest.approx((1 + 2 / 3) / 2)
    # |GT| larger than k: divide by k
    assert ap_at_k(["a", "b"], {"a", "b", "c"}, 2) == pytest.approx(1.0)


def test_map_skips_queries_with_empty_gt():
    rankings = {"q1": ["a"], "q2": ["b"]}
    gt = {"q1": {"a"}, "q2": set()}
    m = mean_average_precision(rankings, gt, 5)
    assert m.num_queries == 1 and m.map_mirror == pytest.approx(1.0) and m.map_at_k == pytest.approx(1.0)
    assert math.isnan(mean_average_precision(rankings, {"q2": set()}, 5).map_mirror)


def test_empty_gt_raises():
    with pytest.raises(ValueError):
        ap_mirror(["a"], set())
