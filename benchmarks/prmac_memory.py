"""Peak memory of PR-MAC re-ranking with the regional descriptors in memory vs read per query chunk (RegionStore).

    python benchmarks/prmac_memory.py make --images 10000 --out outputs/prmac_memory
    python benchmarks/prmac_memory.py run --out outputs/prmac_memory [--queries 2000 --shortlist 20]

`make` writes a synthetic descriptor file (clustered unit vectors: 35 regions x 1280-d fp16 an image, as extraction
at 384 px, and their MAC as the global descriptor). `run` times `retrieve` on it twice, each in a fresh process:
`memory` (the regions read whole, as up to exact_max) and `store` (a RegionStore, as above exact_max), with the same
search (exact) so only the regions' handling differs, and writes results.json: seconds, peak RSS (VmHWM) over the
process's RSS after its imports, before reading the file, and whether both gave the same neighbours.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import h5py
import numpy as np

REGIONS, DIM = 35, 1280


def make(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.images // 20, REGIONS, DIM)).astype(np.float32)
    with h5py.File(out / "feats.h5.tmp", "w") as f:
        for start in range(0, args.images, 500):
            n = min(500, args.images - start)
            reg = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.normal(size=(n, REGIONS, DIM))
            reg /= np.linalg.norm(reg, axis=-1, keepdims=True)
            glob = reg.max(axis=1)
            glob /= np.linalg.norm(glob, axis=-1, keepdims=True)
            for i in range(n):
                name = f"img{start + i:07d}.jpg"
                f[f"{name}/global_descriptor"] = glob[i].astype(np.float16)
                f[f"{name}/regional_descriptors"] = reg[i].astype(np.float16)
    (out / "feats.h5.tmp").rename(out / "feats.h5")
    print(f"{args.images} images -> {out / 'feats.h5'}")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _one(path: str, mode: str, queries: int, shortlist: int, queue) -> None:
    from mirror_sfm.regions import RegionStore, read_for_retrieval
    from mirror_sfm.retrieval import RetrievalOptions, retrieve

    reads = []
    real_read = RegionStore.read

    def counted(self, ids):  # images read from the file per call (the re-ranking's chunks)
        rows = real_read(self, ids)
        reads.append(len(rows))
        return rows

    RegionStore.read = counted

    base = _status_mb("VmRSS")  # after the imports (torch, faiss): what the data and the re-ranking add
    t0 = time.perf_counter()
    exact_max = 10**9 if mode == "memory" else 0
    names, glob, regional = read_for_retrieval(path, None, "prmac", exact_max)
    read_s = time.perf_counter() - t0
    opts = RetrievalOptions(num_matched=10, shortlist=shortlist)  # exact search in both modes
    nn = retrieve(glob, regional, opts, query_ids=np.arange(min(queries, len(names))))
    queue.put(
        {
            "mode": mode,
            "images": len(names),
            "queries": min(queries, len(names)),
            "shortlist": shortlist,
            "read_s": round(read_s, 1),
            "total_s": round(time.perf_counter() - t0, 1),
            "peak_rss_over_start_mb": round(_status_mb("VmHWM") - base, 1),
            "store_chunks": len(reads),
            "store_images_read": int(sum(reads)),
            "store_max_chunk_images": max(reads, default=0),
            "indices": nn.indices.tolist(),
        }
    )


def run(args) -> None:
    out = Path(args.out)
    ctx = mp.get_context("spawn")
    results = []
    for mode in ("memory", "store"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_one, args=(str(out / "feats.h5"), mode, args.queries, args.shortlist, queue))
        proc.start()
        results.append(queue.get())
        proc.join()
    same = results[0].pop("indices") == results[1].pop("indices")
    report = {"runs": results, "same_neighbours": same}
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--images", type=int, default=10_000)
    m.add_argument("--out", default="outputs/prmac_memory")
    m.set_defaults(func=make)
    r = sub.add_parser("run")
    r.add_argument("--out", default="outputs/prmac_memory")
    r.add_argument("--queries", type=int, default=2000)
    r.add_argument("--shortlist", type=int, default=20)
    r.set_defaults(func=run)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
