"""Query time and peak memory of `mirror_sfm.retrieval.retrieve` on random 256-d descriptors (k = 50).

Every image is a query against all images (the SfM case). Each configuration runs in a fresh process so its
peak resident memory (ru_maxrss) is its own; the baseline is the same process's memory after creating the data.
Usage: python benchmarks/retrieval_speed.py [--sizes 10000 100000] [--k 50] [--dim 256]
"""

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(n: int, dim: int, k: int, exact_max: int, queue) -> None:
    import numpy as np

    from mirror_sfm.retrieval import RetrievalOptions, retrieve

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    nn = retrieve(x, None, RetrievalOptions(num_matched=k, rerank="none", exact_max=exact_max))
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    recall = None
    if n > exact_max:  # recall@1 of the IVF index against brute force on 1000 queries
        q = x[:1000]
        sims = q @ x.T
        sims[np.arange(1000), np.arange(1000)] = -np.inf
        recall = float((nn.indices[:1000, 0] == sims.argmax(1)).mean())
    queue.put(
        {
            "n": n,
            "dim": dim,
            "k": k,
            "index": "exact" if n <= exact_max else "ivf",
            "seconds": round(secs, 2),
            "queries_per_s": round(n / secs, 1),
            "data_mb": round(x.nbytes / 2**20, 1),
            "baseline_rss_mb": round(base, 1),
            "peak_rss_mb": round(peak, 1),
            "ivf_recall@1": recall,
        }
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="*", type=int, default=[10_000, 100_000])
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("outputs/retrieval_speed.json"))
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for n in args.sizes:
        for exact_max in sorted({100_000, n - 1}) if n > 10_000 else [100_000]:
            q = ctx.Queue()
            p = ctx.Process(target=run, args=(n, args.dim, args.k, exact_max, q))
            p.start()
            rows.append(q.get())
            p.join()
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores", "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
