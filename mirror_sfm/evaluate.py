"""Retrieval quality against overlap ground truth: mAP@k with the two AP definitions in use.

- `ap_mirror` (hlzz/mirror compute_overlap_benchmark.py): trapezoid rule over the ranked list,
  sum (R_i - R_{i-1}) (P_{i-1} + P_i) / 2 with P_0 = 1; recall denominator = the query's full GT size.
- `ap_at_k` (the usual AP@k): 1 / min(k, |GT|) * sum_{r <= k} P@r rel(r).
mAP averages over queries with a non-empty ground truth. A ranked list is read once per item (a repeat
counts as nothing); scores with ties are ranked by `rank_by_score`, which keeps the input order among equals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def dedupe(ranked: Iterable, query=None) -> list:
    """The ranked list without the query itself and without repeats (first occurrence kept)."""
    seen, out = set(), []
    for item in ranked:
        if item == query or item in seen:
            continue
        seen.add(item)
        out.append(item)
    return out


def rank_by_score(items: Sequence, scores: Sequence[float]) -> list:
    """Items by decreasing score; tied items keep their input order (a stable, reproducible tie rule)."""
    order = sorted(range(len(items)), key=lambda i: -float(scores[i]))
    return [items[i] for i in order]


def precision_recall(ranked: Sequence, relevant: set, k: int) -> tuple[np.ndarray, np.ndarray]:
    """P@r and R@r for r = 1..k; ranks past the end of a short list count as misses."""
    if not relevant:
        raise ValueError("precision-recall is undefined for a query with no relevant item")
    hits = np.zeros(k)
    ranked = dedupe(ranked)[:k]
    hits[: len(ranked)] = [item in relevant for item in ranked]
    cum = np.cumsum(hits)
    return cum / np.arange(1, k + 1), cum / len(relevant)


def ap_mirror(ranked: Sequence, relevant: set, k: int | None = None) -> float:
    """MIRorR's AP of the first k results (trapezoid rule, P_0 = 1, recall over the full GT)."""
    if not relevant:
        raise ValueError("AP is undefined for a query with no relevant item")
    ranked = dedupe(ranked)[:k] if k else dedupe(ranked)
    ap, hits, prev_p, prev_r = 0.0, 0, 1.0, 0.0
    for i, item in enumerate(ranked, 1):
        hits += item in relevant
        p, r = hits / i, hits / len(relevant)
        ap += (r - prev_r) * (prev_p + p) / 2.0
        prev_p, prev_r = p, r
    return ap


def ap_at_k(ranked: Sequence, relevant: set, k: int) -> float:
    """AP@k = 1 / min(k, |GT|) * sum over the top k of precision@r at each relevant rank."""
    if not relevant:
        raise ValueError("AP is undefined for a query with no relevant item")
    hits, total = 0, 0.0
    for i, item in enumerate(dedupe(ranked)[:k], 1):
        if item in relevant:
            hits += 1
            total += hits / i
    return total / min(k, len(relevant))


@dataclass
class MAP:
    k: int
    map_mirror: float
    map_at_k: float
    num_queries: int  # queries with a non-empty ground truth (the ones averaged)
    num_empty_gt: int = 0  # queries left out because nothing is relevant to them


def mean_average_precision(
    rankings: dict, ground_truth: dict[object, set], k: int, queries: Iterable | None = None
) -> MAP:
    """mAP@k over queries with non-empty GT; a query missing from `rankings` counts as an empty list."""
    asked = list(queries if queries is not None else ground_truth)
    queries = [q for q in asked if ground_truth.get(q)]
    empty = len(asked) - len(queries)
    if not queries:
        return MAP(k, float("nan"), float("nan"), 0, empty)
    a = [ap_mirror(rankings.get(q, []), ground_truth[q], k) for q in queries]
    b = [ap_at_k(rankings.get(q, []), ground_truth[q], k) for q in queries]
    return MAP(k, float(np.mean(a)), float(np.mean(b)), len(queries), empty)
