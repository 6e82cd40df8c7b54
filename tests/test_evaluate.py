import math

import pytest

from mirror_sfm.evaluate import ap_at_k, ap_mirror, dedupe, mean_average_precision, precision_recall, rank_by_score


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


def test_ties_keep_input_order():
    # scores 0.9, 0.5, 0.5, 0.1: the two tied items stay in the order given
    assert rank_by_score(["a", "x", "b", "y"], [0.9, 0.5, 0.5, 0.1]) == ["a", "x", "b"] + ["y"]
    assert rank_by_score(["a", "b", "x", "y"], [0.9, 0.5, 0.5, 0.1]) == ["a", "b", "x", "y"]
    # so a tie between a relevant and an irrelevant item is decided by the input order:
    gt = {"a", "b"}
    first = rank_by_score(["a", "x", "b"], [1.0, 0.5, 0.5])  # a, x, b: rel at ranks 1 and 3
    second = rank_by_score(["a", "b", "x"], [1.0, 0.5, 0.5])  # a, b, x: rel at ranks 1 and 2
    assert ap_at_k(first, gt, 3) == pytest.approx((1 + 2 / 3) / 2)
    assert ap_at_k(second, gt, 3) == pytest.approx(1.0)
    # trapezoid AP of a, b, x: (R, P) = (0.5, 1), (1, 1), (1, 2/3) -> 0.5 + 0.5 + 0
    assert ap_mirror(second, gt) == pytest.approx(1.0)


def test_repeats_and_self_count_once():
    # a pair file may list a neighbour twice (retrieval + sequential): the repeat is no second hit
    assert ap_at_k(["a", "a", "x", "b"], {"a", "b"}, 3) == pytest.approx((1 + 2 / 3) / 2)
    assert ap_mirror(["a", "a", "x", "b"], {"a", "b"}) == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)
    assert dedupe(["q", "a", "q", "b", "a"], query="q") == ["a", "b"]


def test_ap_with_k_cut_by_hand():
    # ranked x, a, y, b; |GT| = 3; k = 2. AP@2 = (1/2) / min(2, 3) = 0.25
    assert ap_at_k(["x", "a", "y", "b"], {"a", "b", "c"}, 2) == pytest.approx(0.25)
    # trapezoid over the first 2: (R, P): (0, 0), (1/3, 1/2); P0 = 1 -> 0 + 1/3 * (0 + 1/2) / 2 = 1/12
    assert ap_mirror(["x", "a", "y", "b"], {"a", "b", "c"}, 2) == pytest.approx(1 / 12)
    # nothing relevant retrieved -> 0 for both
    assert ap_at_k(["x", "y"], {"a"}, 2) == 0.0 and ap_mirror(["x", "y"], {"a"}, 2) == 0.0


def test_precision_recall_by_hand():
    p, r = precision_recall(["a", "x", "b"], {"a", "b", "c", "d"}, 4)  # 4th rank past the list: a miss
    assert p.tolist() == pytest.approx([1, 0.5, 2 / 3, 0.5])
    assert r.tolist() == pytest.approx([0.25, 0.25, 0.5, 0.5])


def test_map_by_hand_with_empty_and_missing_queries():
    gt = {"q1": {"a", "b"}, "q2": {"c"}, "q3": set(), "q4": {"d"}}
    rankings = {"q1": ["a", "x", "b"], "q2": ["x", "c"], "q3": ["a"]}  # q4 never ranked: AP 0
    m = mean_average_precision(rankings, gt, 3)
    assert m.num_queries == 3 and m.num_empty_gt == 1
    ap_k = [(1 + 2 / 3) / 2, 1 / 2 / 1, 0.0]
    ap_m = [0.5 + 0.5 * (0.5 + 2 / 3) / 2, 1 * (0 + 0.5) / 2, 0.0]  # q2: (R, P) = (0, 0), (1, 1/2)
    assert m.map_at_k == pytest.approx(sum(ap_k) / 3)
    assert m.map_mirror == pytest.approx(sum(ap_m) / 3)
