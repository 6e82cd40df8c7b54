"""The compressed index above `--exact-max` on real-like descriptors: build time, search time, memory and
recall@k against exact search, at 100k and 1M database images (issue 14).

Two steps, both resumable (run them under `nice -n 10`; each can be stopped and re-run):

  vectors  Real-like 1280-d descriptors from the photos of ../shared: every photo (statue_of_liberty_40 left out,
           a subset of statue_of_liberty) is seen under `--augmentations` views (view 0 the plain 384 px image
           the product describes; the others a random crop of 30-100 % of the area, aspect 3:4-4:3, a flip with
           probability 1/2, brightness/contrast/saturation x0.7-1.3, then resized to a long side of 288-480 px).
           Each view is one forward pass of the ImageNet EfficientNet-Lite0; from its feature map come the global
           MAC descriptor (`describe_map`, as extraction) and `--regions` MAC vectors of random rectangles of the
           map (distinct ones, each side 40-100 % of the map's, anywhere in it), like further crops. All
           L2-normalised, stored float16 (as the descriptor file stores them) in shards of `--photos-per-shard`
           photos under OUT/shards; a finished shard is never recomputed.
  bench    For each size N (a fixed-seed random subset of the vectors), `--queries` database vectors are
           queried against all N, self excluded, top-k. Ground truth: exact inner product (faiss IndexFlatIP over
           blocks of the database), cached; its time per query, times N, is the exact search's projection.
           Each index configuration runs in a fresh process (its own peak RSS: VmHWM minus VmRSS after loading
           the N vectors as float32, as `retrieve` holds them): build (train on a fixed-seed sample, add in
           chunks) through `mirror_sfm.retrieval`, then the query sample at each nprobe x re-scored depth
           (`search(..., refine=R)`: R index candidates re-scored exactly from the float32 vectors); search time
           for all N queries is the sample's time times N / queries (linear extrapolation). Index bytes per vector =
           faiss.serialize_index size / N (codes, ids, centroids, codebooks, transforms: everything it holds).
           Results are appended to OUT/results.jsonl; a configuration already there is skipped.
  full     `retrieve` itself with its defaults on all N vectors, every one a query (no extrapolation): total
           time, peak RSS over the data, recall@k on the query sample. Appended to OUT/full.jsonl.
  table    The markdown table of OUT/results.jsonl.

Usage:
  nice -n 10 python benchmarks/index_scale.py vectors [--out outputs/index_scale] [--max-minutes 20]
  nice -n 10 python benchmarks/index_scale.py bench --sizes 100000 1000000 --configs exact pcar-ivfpq48 ...
  nice -n 10 python benchmarks/index_scale.py full --sizes 1000000
  python benchmarks/index_scale.py table
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from queue import Empty

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCENES = REPO.parent / "shared" / "data" / "scenes"  # ../shared beside the checkout
SKIP_SCENES = {"statue_of_liberty_40"}  # a subset of statue_of_liberty: the same photos twice
DECODE_SIDE = 768  # decoded at this long side, cropped, then resized to the view's side


# ----------------------------------------------------------------------------------------------- vectors
def list_photos(root: Path) -> list[Path]:
    from mirror_sfm.images import list_images

    photos = []
    for scene in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP_SCENES):
        if (scene / "images").is_dir():
            photos += [scene / "images" / n for n in list_images(scene / "images")]
    return photos


def augmented_view(path: Path, seed: int, view: int):
    """RGB float tensor (3, H, W) in [0, 1]: view 0 is the product's 384 px image, others are augmented."""
    import torch
    from PIL import Image, ImageEnhance

    from mirror_sfm.images import decode_image, resized_size

    if view == 0:
        rgb, _ = decode_image(path, 384)
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
    rng = np.random.default_rng(seed)
    rgb, _ = decode_image(path, DECODE_SIDE)
    img = Image.fromarray(rgb)
    w, h = img.size
    area = rng.uniform(0.3, 1.0) * w * h
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = int(round(min(w, math.sqrt(area * aspect))))
    ch = int(round(min(h, math.sqrt(area / aspect))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(rng.uniform(0.7, 1.3))
    side = int(rng.integers(288, 481))
    img = img.resize(resized_size(cw, ch, side), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def range_max(x, axis: int, min_len: int):
    """Maxima of `x` over every range [a, b) along `axis` with b - a >= min_len: (ranges, ...) and their (a, b)."""
    import torch

    n = x.shape[axis]
    out, spans = [], []
    for a in range(n):
        run = None
        for b in range(a + 1, n + 1):
            row = x.select(axis, b - 1)
            run = row if run is None else torch.maximum(run, row)
            if b - a >= min_len:
                out.append(run)
                spans.append((a, b))
    return torch.stack(out), spans


def view_vectors(model, image, regions: int, seed: int) -> np.ndarray:
    """(1 + regions, C) float16: the global descriptor of the view, then MACs of distinct random rectangles of
    its feature map, each side 40-100 % of the map's (repeated only when a map has fewer such rectangles)."""
    import torch

    from mirror_sfm.pooling import l2n

    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        fmap = model(image[None])
        glob, _ = model.describe_map(fmap)
        c, h, w = fmap.shape[1:]
        rows, _ = range_max(fmap[0], 1, max(1, math.ceil(0.4 * h)))  # (Rh, C, W): max over row ranges
        table, _ = range_max(rows, 2, max(1, math.ceil(0.4 * w)))  # (Rw, Rh, C): max over rectangles
        flat = table.reshape(-1, c)
        pick = rng.choice(len(flat), size=regions, replace=len(flat) < regions)  # a tiny map repeats some
        vecs = l2n(torch.cat([glob, flat[torch.from_numpy(pick)]]))
    return vecs.numpy().astype(np.float16)


def make_vectors(args) -> None:
    import torch
    from tqdm import tqdm

    from mirror_sfm.io_utils import atomic_path, write_text_atomic
    from mirror_sfm.model import load_model

    torch.set_num_threads(args.threads)
    photos = list_photos(args.scenes)
    shard_dir = args.out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(len(photos) / args.photos_per_shard)
    per_photo = args.augmentations * (1 + args.regions)
    meta = {
        "photos": len(photos),
        "augmentations": args.augmentations,
        "regions": args.regions,
        "photos_per_shard": args.photos_per_shard,
        "vectors": len(photos) * per_photo,
        "model": "efficientnet-lite0-imagenet, MAC",
    }
    meta_path = args.out / "vectors.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        sys.exit(f"{meta_path} was made with other settings; use another --out")
    write_text_atomic(meta_path, json.dumps(meta, indent=1))
    model = load_model("imagenet").eval()
    start = time.monotonic()
    todo = [s for s in range(n_shards) if not (shard_dir / f"{s:04d}.npy").exists()]
    print(f"{len(photos)} photos, {meta['vectors']:,} vectors, {len(todo)} of {n_shards} shards to do", flush=True)
    for s in tqdm(todo, desc="shards", unit="shard"):
        if args.max_minutes and time.monotonic() - start > 60 * args.max_minutes:
            print("time budget reached: re-run to continue", flush=True)
            return
        block = photos[s * args.photos_per_shard : (s + 1) * args.photos_per_shard]
        vecs = np.empty((len(block) * per_photo, model.backbone.info.channels), np.float16)
        row = 0
        for i, path in enumerate(tqdm(block, desc=f"shard {s}", unit="photo", leave=False)):
            p = s * args.photos_per_shard + i
            for v in range(args.augmentations):
                seed = p * 1000 + v
                vecs[row : row + 1 + args.regions] = view_vectors(
                    model, augmented_view(path, seed, v), args.regions, seed + 10**7
                )
                row += 1 + args.regions
        with atomic_path(shard_dir / f"{s:04d}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, vecs)
    print(f"all {n_shards} shards done in {shard_dir}", flush=True)


# ------------------------------------------------------------------------------------------------- bench
# name -> (faiss index_factory string, what it is); {nlist} = mirror_sfm.retrieval.ivf_nlist(N)
CONFIGS = {
    "ivf-flat": ("IVF{nlist},Flat", "IVF-Flat, full float32 vectors (the index used above 100k before)"),
    "pcar-ivfpq48": ("PCAR240,IVF{nlist},PQ48np", "uncentred PCA to 240-d + rotation, IVF, PQ 48 x 8 bit"),
    "pcar-ivfpq48-centred": ("PCAR240,IVF{nlist},PQ48np", "the same with faiss's own (centred) PCA"),
    "pcar-ivfpq96fs": ("PCAR192,IVF{nlist},PQ96x4fs", "uncentred PCA to 192-d, rotation, IVF, PQ 96 x 4 bit fast scan"),
    "pcar-ivfpq64fs": ("PCAR256,IVF{nlist},PQ64x4fs", "uncentred PCA to 256-d, rotation, IVF, PQ 64 x 4 bit fast scan"),
    "opq-ivfpq48": ("OPQ48_240,IVF{nlist},PQ48np", "OPQ rotation to 240-d, IVF, PQ 48 x 8 bit"),
    "hnsw32": ("HNSW32", "HNSW, 32 links, full float32 vectors"),
}
FULL_VECTORS = {"ivf-flat", "hnsw32"}  # exact scores already: nothing to re-score


def proc_status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def subset_rows(total: int, n: int) -> np.ndarray:
    """The database of size n: a fixed-seed random subset of the vectors (all when n >= total)."""
    if n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(0).choice(total, n, replace=False))


def load_database(out: Path, n: int) -> np.ndarray:
    """The (n, D) database as float32 (what `retrieve` holds), filled shard by shard (no second full copy)."""
    meta = json.loads((out / "vectors.json").read_text())
    rows = subset_rows(meta["vectors"], n)
    n_shards = math.ceil(meta["photos"] / meta["photos_per_shard"])
    db, row, offset = None, 0, 0
    for s in range(n_shards):
        path = out / "shards" / f"{s:04d}.npy"
        if not path.exists():
            sys.exit(f"{path} missing: run the 'vectors' step to the end")
        shard = np.load(path, mmap_mode="r")
        if db is None:
            db = np.empty((len(rows), shard.shape[1]), np.float32)
        lo, hi = np.searchsorted(rows, [offset, offset + len(shard)])
        db[row : row + hi - lo] = shard[rows[lo:hi] - offset]
        row += hi - lo
        offset += len(shard)
    return db


def query_rows(n: int, queries: int) -> np.ndarray:
    return np.sort(np.random.default_rng(1).choice(n, min(n, queries), replace=False))


def ground_truth(out: Path, db: np.ndarray, qrows: np.ndarray, k: int, block: int = 65536) -> dict:
    """Exact top-k (self excluded) of the query rows over `db`, cached in OUT; with its time per query."""
    import faiss
    from tqdm import tqdm

    path = out / f"gt_{len(db)}_{len(qrows)}_{k}.npz"
    if path.exists():
        z = np.load(path)
        return {"ids": z["ids"], "scores": z["scores"], "s_per_query": float(z["s_per_query"])}
    q = db[qrows]
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    t = time.perf_counter()
    for start in tqdm(range(0, len(db), block), desc=f"exact top-{k} of {len(q)} queries", unit="block"):
        index = faiss.IndexFlatIP(db.shape[1])
        index.add(db[start : start + block])
        scores, ids = index.search(q, k + 1)
        ids += start
        scores[ids == qrows[:, None]] = -np.inf  # self excluded
        heap.add_result(np.ascontiguousarray(scores), np.ascontiguousarray(ids))
    heap.finalize()
    secs = (time.perf_counter() - t) / len(q)
    from mirror_sfm.io_utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, ids=heap.I, scores=heap.D, s_per_query=secs)
    return {"ids": heap.I, "scores": heap.D, "s_per_query": secs}


def recall_at_k(db: np.ndarray, q: np.ndarray, found: np.ndarray, gt_scores: np.ndarray, k: int) -> float:
    """Share of the exact top-k found, ties counted: a returned image whose exact score reaches the k-th exact
    score counts (near-identical crops make the exact top-k's last members arbitrary among equals)."""
    from mirror_sfm.retrieval import rescore

    exact = rescore(db, q, found[:, :k])
    return float((exact >= gt_scores[:, k - 1 : k] - 1e-4).sum(axis=1).clip(max=k).mean() / k)


def bench_config(out: Path, n: int, name: str, args, queue) -> None:
    import faiss

    from mirror_sfm.retrieval import (
        RetrievalOptions,
        add_chunked,
        ivf_nlist,
        make_compressed_index,
        search,
        set_nprobe,
        train_index,
        training_sample,
    )

    faiss.omp_set_num_threads(args.threads)
    db = load_database(out, n)
    qrows = query_rows(n, args.queries)
    gt = ground_truth(out, db, qrows, args.k)
    q = db[qrows]
    base = proc_status_mb("VmRSS")
    rows = []
    common = {"n": n, "dim": db.shape[1], "queries": len(qrows), "k": args.k, "config": name}
    if name == "exact":
        s = gt["s_per_query"]
        rows.append(
            {**common, "spec": "IndexFlatIP", "search_all_s": s * n, "recall": 1.0, "bytes_per_vector": 4 * db.shape[1]}
        )
    else:
        spec = CONFIGS[name][0]
        opts = RetrievalOptions(index=spec, train_per_list=args.train_per_list)
        t = time.perf_counter()
        index = make_compressed_index(db, opts)
        if name.endswith("-centred"):  # faiss's PCA as it is: fitted on the same sample, centred
            pca = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
            pca.train(training_sample(db, args.train_per_list * ivf_nlist(n, opts)))
        train_index(index, db, opts)  # HNSW: nothing to train
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        add_chunked(index, db, desc=name)
        add_s = time.perf_counter() - t
        built = {
            **common,
            "spec": spec.replace("{nlist}", str(ivf_nlist(n, opts))),
            "train_s": round(train_s, 1),
            "add_s": round(add_s, 1),
        }
        probes = [None] if name.startswith("hnsw") else args.nprobe
        for nprobe in probes:
            if nprobe is None:
                faiss.downcast_index(index).hnsw.efSearch = args.ef_search
            else:
                set_nprobe(index, nprobe)
            for refine in [0] if name in FULL_VECTORS else args.refine:
                t = time.perf_counter()
                nn = search(index, q, args.k, qrows, args.chunk_size, db=db, refine=refine)
                secs = time.perf_counter() - t
                rows.append(
                    {
                        **built,
                        "nprobe": nprobe if nprobe is not None else f"efSearch {args.ef_search}",
                        "refine": refine,
                        "search_s": round(secs, 2),
                        "search_all_s": round(secs * n / len(qrows), 1),
                        "recall": round(recall_at_k(db, q, nn.indices, gt["scores"], args.k), 4),
                        "peak_rss_over_data_mb": round(proc_status_mb("VmHWM") - base, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        size = len(faiss.serialize_index(index))  # after the searches: its buffer is not in their peak RSS
        for r in rows:
            r["bytes_per_vector"] = round(size / n, 1)
    for r in rows:
        r["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads"
    queue.put(rows)


def bench(args) -> None:
    from mirror_sfm.io_utils import write_text_atomic

    results = args.out / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    ctx = mp.get_context("spawn")
    for n in args.sizes:
        for name in args.configs:
            if any(r["n"] == n and r["config"] == name for r in done):
                print(f"{name} at {n:,}: already in {results}", flush=True)
                continue
            done += run_isolated(ctx, bench_config, (args.out, n, name, args), f"{name} at {n:,}")
            write_text_atomic(results, "".join(json.dumps(r) + "\n" for r in done))


def run_isolated(ctx, target, args: tuple, label: str) -> list[dict]:
    """Run `target(*args, queue)` in a fresh process (its own peak memory) and return the rows it puts on the
    queue; a process that dies without answering ends the benchmark with one line naming `label`."""
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            rows = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                sys.exit(f"{label} failed (exit code {proc.exitcode}): see above")
    proc.join()
    return rows


def full_config(out: Path, n: int, args, queue) -> None:
    """`retrieve` with its defaults (exact_max lowered below n when asked), every image a query."""
    import faiss

    from mirror_sfm.retrieval import RetrievalOptions, retrieve

    faiss.omp_set_num_threads(args.threads)
    db = load_database(out, n)
    qrows = query_rows(n, args.queries)
    gt = ground_truth(out, db, qrows, args.k)
    base = proc_status_mb("VmRSS")
    opts = RetrievalOptions(num_matched=args.k, rerank="none")
    if args.exact_max is not None:
        opts.exact_max = args.exact_max
    t = time.perf_counter()
    nn = retrieve(db, None, opts)
    secs = time.perf_counter() - t
    row = {
        "n": n,
        "dim": db.shape[1],
        "k": args.k,
        "config": "retrieve (defaults, all queries)",
        "spec": opts.index if n > opts.exact_max else "IndexFlatIP",
        "nprobe": opts.ivf_nprobe,
        "refine": opts.refine,
        "total_s": round(secs, 1),
        "recall": round(recall_at_k(db, db[qrows], nn.indices[qrows], gt["scores"], args.k), 4),
        "peak_rss_over_data_mb": round(proc_status_mb("VmHWM") - base, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
    }
    print(json.dumps(row), flush=True)
    queue.put([row])


def full(args) -> None:
    """One end-to-end run per size: no extrapolation."""
    from mirror_sfm.io_utils import write_text_atomic

    results = args.out / "full.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    ctx = mp.get_context("spawn")
    for n in args.sizes:
        done += run_isolated(ctx, full_config, (args.out, n, args), f"retrieve at {n:,}")
        write_text_atomic(results, "".join(json.dumps(r) + "\n" for r in done))


def table(args) -> None:
    results = [json.loads(line) for line in (args.out / "results.jsonl").read_text().splitlines()]
    print(
        "| N | index | bytes/vector | train (s) | add (s) | nprobe | re-scored | search, all N queries (s) "
        "| recall@k | peak RSS over data (MB) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if (args.nprobe and r.get("nprobe") not in (None, *args.nprobe)) or (
            args.refine and r.get("refine") not in (None, *args.refine)
        ):
            continue
        print(
            f"| {r['n']:,} | {r['config']} `{r['spec']}` | {r['bytes_per_vector']} | {r.get('train_s', '')} "
            f"| {r.get('add_s', '')} | {r.get('nprobe', '')} | {r.get('refine', '')} | {r['search_all_s']:,.0f} "
            f"| {r['recall']:.3f} | {r.get('peak_rss_over_data_mb', '')} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    v = sub.add_parser("vectors", help="make the real-like vectors (resumable)")
    v.add_argument("--scenes", type=Path, default=SCENES)
    v.add_argument("--augmentations", type=int, default=8, help="views per photo (view 0 unaugmented)")
    v.add_argument("--regions", type=int, default=119, help="random map rectangles per view (plus its global)")
    v.add_argument("--photos-per-shard", type=int, default=32)
    v.add_argument("--threads", type=int, default=1, help="torch threads (more than 1 slows down on a shared machine)")
    v.add_argument("--max-minutes", type=float, default=0, help="stop after this long (0: run to the end)")
    b = sub.add_parser("bench", help="build and search each index configuration (resumable)")
    b.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    b.add_argument("--configs", nargs="+", default=["exact", "pcar-ivfpq48"], choices=["exact", *CONFIGS])
    b.add_argument("--queries", type=int, default=2000, help="query sample (database vectors)")
    b.add_argument("--k", type=int, default=50)
    b.add_argument("--nprobe", nargs="+", type=int, default=[8, 16, 32, 64])
    b.add_argument("--refine", nargs="+", type=int, default=[0, 100, 200])
    b.add_argument("--ef-search", type=int, default=128, help="HNSW search depth")
    b.add_argument("--train-per-list", type=int, default=50)
    b.add_argument("--chunk-size", type=int, default=2048)
    b.add_argument("--threads", type=int, default=2)
    f = sub.add_parser("full", help="time retrieve() end to end, every image a query (no extrapolation)")
    f.add_argument("--sizes", nargs="+", type=int, default=[1_000_000])
    f.add_argument("--exact-max", type=int, default=None, help="retrieve's exact_max (default: its own)")
    t = sub.add_parser("table", help="print the results table")
    t.add_argument("--nprobe", nargs="*", type=int, help="only these nprobe")
    t.add_argument("--refine", nargs="*", type=int, help="only these re-scored depths")
    for p in (f, t):
        p.add_argument("--queries", type=int, default=2000)
        p.add_argument("--k", type=int, default=50)
        p.add_argument("--threads", type=int, default=2)
    for p in (v, b, f, t):
        p.add_argument("--out", type=Path, default=Path("outputs/index_scale"))
    args = ap.parse_args()
    {"vectors": make_vectors, "bench": bench, "full": full, "table": table}[args.step](args)


if __name__ == "__main__":
    main()
