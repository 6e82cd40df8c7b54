"""Nearest-neighbour search over global descriptors, PR-MAC re-ranking and alpha query expansion.

Memory stays bounded: queries go to faiss in chunks (no dense N x N matrix). Exact inner-product search
up to `exact_max` database images; above that a compressed faiss index (`RetrievalOptions.index`, by default
PCA to 256-d, IVF and 4-bit fast-scan PQ: under 64 bytes per image at 1M) trained on a fixed-seed sample, whose
`refine` best candidates per query are re-scored exactly from the descriptors the caller holds (the index keeps
only its codes). faiss-gpu is used when it and a GPU exist (fast-scan PQ becomes 8-bit PQ of the same size there).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from tqdm import tqdm

from .errors import MirrorError
from .pooling import prmac_score, rmac_from_regions
from .regions import RegionStore
from .whitening import Whitening, fit_pca_whitening

logger = logging.getLogger(__name__)

# The compressed index above exact_max, chosen on real-like descriptors at 1M (benchmarks/RESULTS.md, index_scale).
DEFAULT_INDEX = "PCAR240,IVF{nlist},PQ48np"
DEFAULT_NPROBE = 16
DEFAULT_REFINE = 400
GPU_MAX_K = 2048  # faiss-gpu returns at most this many neighbours per query
WHITENING_SAMPLE = 200_000  # regional vectors 'database' whitening is fitted on when they are read from disk


@dataclass
class RetrievalOptions:
    """How neighbours are found. Defaults chosen on held-out scenes (benchmarks/RESULTS.md).

    Attributes:
        num_matched: neighbours kept per query image (K).
        rerank: re-rank a shortlist by PR-MAC regional matching: prmac | none.
        shortlist: CNN candidates re-ranked by PR-MAC per query.
        query_expansion: alpha query expansion over this many top neighbours (0: off).
        qe_alpha: the exponent of alpha query expansion.
        whitening: descriptor whitening: auto (the weights' own when they carry one and the descriptors are
            provably theirs, else none) | none | model (the weights' own) | database (PCA fitted on these images).
        whitening_dim: output dimension of 'database' whitening.
        exact_max: exact search up to this many database images, the compressed index above.
        index: faiss index_factory string of the compressed index (inner product) used above exact_max; {nlist}
            stands for the number of inverted lists (e.g. IVF{nlist},Flat).
        ivf_nlist: inverted lists of the compressed index (0: the power of 2 nearest 4 sqrt(N)).
        ivf_nprobe: inverted lists of the compressed index searched per query.
        refine: compressed-index candidates per query re-scored exactly from the descriptors (0: none).
        train_per_list: training vectors per inverted list of the compressed index (a fixed-seed sample of the
            database).
        chunk_size: queries per faiss call (bounds memory).
        use_gpu: faiss on the GPU: auto | yes | no.
    """

    num_matched: int = 20
    rerank: str = "prmac"
    shortlist: int = 100
    query_expansion: int = 0
    qe_alpha: float = 3.0
    whitening: str = "auto"
    whitening_dim: int = 256
    exact_max: int = 100_000
    index: str = DEFAULT_INDEX
    ivf_nlist: int = 0
    ivf_nprobe: int = DEFAULT_NPROBE
    refine: int = DEFAULT_REFINE
    train_per_list: int = 50
    chunk_size: int = 2048
    use_gpu: str = "auto"

    def validate(self) -> None:
        """One MirrorError line (naming the command-line flag) for a value no search can use."""
        if self.rerank not in ("prmac", "none"):
            raise MirrorError(f"rerank must be prmac or none, got {self.rerank!r}")
        if self.whitening not in ("auto", "none", "model", "database"):
            raise MirrorError(f"whitening must be auto, none, model or database, got {self.whitening!r}")
        if self.use_gpu not in ("auto", "yes", "no"):
            raise MirrorError(f"use_gpu must be auto, yes or no, not {self.use_gpu!r}")
        at_least = {
            "--prmac-shortlist": (self.shortlist, 1),
            "--query-expansion": (self.query_expansion, 0),
            "--exact-max": (self.exact_max, 0),
            "--index-nlist": (self.ivf_nlist, 0),
            "--index-nprobe": (self.ivf_nprobe, 1),
            "--index-refine": (self.refine, 0),
            "--index-train-per-list": (self.train_per_list, 1),
            "chunk_size": (self.chunk_size, 1),
        }
        for flag, (value, low) in at_least.items():
            if value < low:
                raise MirrorError(f"{flag} must be >= {low}, got {value}")
        spec = self.index.strip()
        if not spec or "{" in spec.replace("{nlist}", "") or "}" in spec.replace("{nlist}", ""):
            raise MirrorError(
                f"--index must be a faiss index_factory string (with {{nlist}} for the number of inverted lists, "
                f"e.g. {DEFAULT_INDEX}); got {self.index!r}"
            )


@dataclass
class Neighbors:
    """Per query, database indices in rank order with their scores (self excluded)."""

    indices: np.ndarray  # (Q, k) int64, -1 where fewer than k exist
    scores: np.ndarray  # (Q, k) float32


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def ivf_nlist(n: int, options: RetrievalOptions) -> int:
    """Inverted lists for `n` vectors: `options.ivf_nlist`, else the power of 2 nearest 4 sqrt(n) (64..65536)."""
    if options.ivf_nlist > 0:
        return options.ivf_nlist
    return int(2 ** round(math.log2(min(65536, max(64, 4 * math.sqrt(n))))))


def index_spec(n: int, options: RetrievalOptions, gpu: bool = False) -> str:
    """The factory string of the compressed index for `n` vectors; on the GPU, fast-scan 4-bit PQ (CPU only)
    becomes 8-bit PQ of the same code size (PQ{2m}x4fs -> PQ{m})."""
    spec = options.index.replace("{nlist}", str(ivf_nlist(n, options)))
    if gpu:
        spec = re.sub(r"PQ(\d+)x4fs", lambda m: f"PQ{int(m.group(1)) // 2}", spec)
    return spec


def _use_gpu(options: RetrievalOptions) -> bool:
    if options.use_gpu not in ("auto", "yes", "no"):
        raise MirrorError(f"use_gpu must be auto, yes or no, not {options.use_gpu!r}")
    if options.use_gpu == "yes" and not faiss_gpu_available():
        raise MirrorError("use_gpu=yes but faiss has no GPU here (install faiss-gpu on a machine with a GPU)")
    return options.use_gpu == "yes" or (options.use_gpu == "auto" and faiss_gpu_available())


def as_float32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def training_sample(db: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """`size` rows of `db` (all when fewer), a fixed-seed random choice in database order, as float32."""
    if size >= len(db):
        return as_float32(db)
    rows = np.sort(np.random.default_rng(seed).choice(len(db), size, replace=False))
    return as_float32(db[rows])


def make_compressed_index(db: np.ndarray, options: RetrievalOptions, gpu: bool = False) -> faiss.Index:
    """The untrained compressed inner-product index for `db` (N, D): `options.index`, `ivf_nprobe` set."""
    n, d = db.shape
    spec = index_spec(n, options, gpu)
    try:
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise MirrorError(f"faiss cannot build index {spec!r} for {d}-d descriptors: {str(exc).strip()}") from None
    set_nprobe(index, options.ivf_nprobe)
    return index


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set the inverted lists searched per query on an IVF index (inside any pre-transform, on the CPU or the
    GPU); an index without inverted lists is left as it is."""
    space = faiss.GpuParameterSpace() if "Gpu" in _inner(index).__class__.__name__ else faiss.ParameterSpace()
    try:
        space.set_index_parameter(index, "nprobe", nprobe)
    except RuntimeError:  # no inverted lists (a flat index)
        pass


def _inner(index: faiss.Index) -> faiss.Index:
    """The index under any pre-transform (faiss.downcast_index gives the concrete class)."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def train_index(index: faiss.Index, db: np.ndarray, options: RetrievalOptions) -> None:
    """Train on a fixed-seed sample of `train_per_list` x nlist database rows (all rows when fewer).

    A leading PCA of the index is fitted uncentred (`fit_uncentred_pca`): faiss's PCA subtracts the mean, and
    the inner product of centred vectors ranks a query's neighbours differently from their own inner product
    (by <q - mean, x>), which the index must approximate.
    """
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        nlist = ivf_nlist(len(db), options)
    sample = training_sample(db, options.train_per_list * nlist)
    logger.info("training the %s index on %d of %d vectors", options.index, len(sample), len(db))
    try:
        pca = _leading_pca(index)
        if pca is not None:
            fit_uncentred_pca(pca, sample)
        index.train(sample)
    except RuntimeError as exc:
        raise MirrorError(
            f"cannot train index {options.index!r} on {db.shape[1]}-d descriptors: {str(exc).strip()}"
        ) from None


def fit_uncentred_pca(pca: faiss.PCAMatrix, sample: np.ndarray, chunk: int = 16384) -> None:
    """Fit a faiss PCAMatrix (its output size, random rotation) on the uncentred second moment of `sample`,
    the PCA that keeps inner products, computed in chunks (no copy of the sample). Only the d_out x d
    projection is kept: the d x d eigenvector matrix is not stored with the index."""
    d = sample.shape[1]
    moment = np.zeros((d, d), dtype=np.float64)
    for start in range(0, len(sample), chunk):
        x = sample[start : start + chunk].astype(np.float64)
        moment += x.T @ x
    values, vectors = np.linalg.eigh(moment / len(sample))
    order = np.argsort(-values)
    faiss.copy_array_to_vector(np.zeros(d, np.float32), pca.mean)
    faiss.copy_array_to_vector(values[order].astype(np.float32), pca.eigenvalues)
    faiss.copy_array_to_vector(np.ascontiguousarray(vectors[:, order].T, dtype=np.float32).ravel(), pca.PCAMat)
    pca.prepare_Ab()
    pca.is_trained = True
    pca.PCAMat.resize(0)


def _leading_pca(index: faiss.Index):
    """The untrained PCAMatrix that first transforms the index's input, or None."""
    index = faiss.downcast_index(index)
    if not isinstance(index, faiss.IndexPreTransform) or index.chain.size() == 0:
        return None
    first = faiss.downcast_VectorTransform(index.chain.at(0))
    return first if isinstance(first, faiss.PCAMatrix) and not first.is_trained else None


def add_chunked(index: faiss.Index, db: np.ndarray, chunk: int = 65536, desc: str = "index") -> None:
    """Add `db` rows in float32 chunks (any float dtype, e.g. float16 or a memmap: no full float32 copy)."""
    for start in tqdm(range(0, len(db), chunk), desc=desc, unit="chunk", disable=len(db) <= chunk):
        index.add(as_float32(db[start : start + chunk]))


def to_gpu(index: faiss.Index, options: RetrievalOptions) -> faiss.Index:
    """The index on GPU 0 (float16 look-up tables, which codes of 56 bytes and more need there). An index
    faiss-gpu cannot hold stays on the CPU with a warning, or is one MirrorError with use_gpu=yes."""
    co = faiss.GpuClonerOptions()
    co.useFloat16 = True
    try:
        gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index, co)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        if options.use_gpu == "yes":
            raise MirrorError(f"faiss-gpu cannot hold index {options.index!r} ({reason}); use use_gpu=no") from None
        logger.warning("faiss-gpu cannot hold index %r (%s): searching on the CPU", options.index, reason)
        return index
    set_nprobe(gpu_index, options.ivf_nprobe)
    return gpu_index


def build_index(db: np.ndarray, options: RetrievalOptions) -> faiss.Index:
    """Inner-product index over L2-normalised rows: exact (IndexFlatIP) up to `exact_max` rows, else the
    compressed `options.index` trained on a fixed-seed sample; on the GPU when faiss-gpu and a GPU exist."""
    n, d = db.shape
    gpu = _use_gpu(options)
    if n <= options.exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        index = make_compressed_index(db, options, gpu)
        train_index(index, db, options)
    if gpu:
        index = to_gpu(index, options)
    add_chunked(index, db)
    return index


def is_exact(index: faiss.Index) -> bool:
    """True for a flat (exhaustive, uncompressed) index, on the CPU or the GPU."""
    return isinstance(_inner(index), faiss.IndexFlat) or _inner(index).__class__.__name__.startswith("GpuIndexFlat")


def rescore(db: np.ndarray, queries: np.ndarray, cand: np.ndarray, budget_bytes: int = 64 << 20) -> np.ndarray:
    """Exact inner products of each query (Q, D) with its candidates `cand` (Q, R), rows of `db` (-1: none ->
    -inf). A float32 in-memory `db` is read in place by faiss (threaded); any other (float16, a memmap) is
    gathered at most ~`budget_bytes` of candidate descriptors at a time."""
    q, r = cand.shape
    out = np.full((q, r), -np.inf, dtype=np.float32)
    queries = as_float32(queries)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    if (
        isinstance(db, np.ndarray)
        and not isinstance(db, np.memmap)
        and db.dtype == np.float32
        and db.flags.c_contiguous
    ):
        ptr = faiss.swig_ptr
        faiss.fvec_inner_products_by_idx(ptr(out), ptr(queries), ptr(db), ptr(cand), db.shape[1], q, r)
        return out
    step = max(1, budget_bytes // max(1, r * db.shape[1] * 4))
    for s in range(0, q, step):
        c = cand[s : s + step]
        vecs = as_float32(db[np.clip(c, 0, None).ravel()]).reshape(len(c), r, -1)
        sc = np.einsum("qd,qrd->qr", queries[s : s + step], vecs)
        out[s : s + step] = np.where(c >= 0, sc, -np.inf)
    return out


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    query_ids: np.ndarray | None,
    chunk_size: int,
    desc: str = "search",
    db: np.ndarray | None = None,
    refine: int = 0,
) -> Neighbors:
    """Top-k by inner product per query, excluding the query itself (`query_ids[i]` = its database index).

    Queries go to faiss `chunk_size` at a time, so memory is bounded by chunk_size x (k or refine). With `db`
    (the indexed descriptors, any float dtype) and `refine` > 0, a compressed index returns `refine`
    candidates per query that are re-scored exactly from `db` (rows gathered in chunks: the index itself keeps
    only its codes) and the top k of them kept.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    extra = 1 if query_ids is not None else 0
    rescoring = db is not None and refine > 0 and not is_exact(index)
    kk = min(max(k, refine if rescoring else 0) + extra, index.ntotal)
    if "Gpu" in _inner(index).__class__.__name__:
        kk = min(kk, GPU_MAX_K)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    for start in tqdm(range(0, len(q), chunk_size), desc=desc, unit="chunk", disable=len(q) <= chunk_size):
        qc = q[start : start + chunk_size]
        scores, idx = index.search(qc, kk)
        if query_ids is not None:
            idx[idx == np.asarray(query_ids[start : start + chunk_size])[:, None]] = -1
        if rescoring:
            scores = rescore(db, qc, idx)
            order = np.argsort(-scores, axis=1, kind="stable")
        else:  # faiss's order; the excluded and missing (-1) go last
            order = np.argsort(idx < 0, axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, axis=1)[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)[:, :k]
        scores[idx < 0] = -np.inf
        out_i[start : start + len(qc), : idx.shape[1]] = idx
        out_s[start : start + len(qc), : idx.shape[1]] = scores
    return Neighbors(out_i, out_s)


def alpha_query_expansion(queries: np.ndarray, db: np.ndarray, nn: Neighbors, n: int, alpha: float) -> np.ndarray:
    """alpha-QE (Radenovic et al.): each query becomes the L2-normalised sum of itself and its top-n
    neighbours weighted by similarity^alpha."""
    idx = nn.indices[:, :n]
    w = np.clip(nn.scores[:, :n], 0, None) ** alpha
    w[idx < 0] = 0
    expanded = queries + np.einsum("qn,qnd->qd", w, db[np.clip(idx, 0, None)])
    return expanded / (np.linalg.norm(expanded, axis=1, keepdims=True) + 1e-6)


def rerank_prmac(
    regions: np.ndarray | RegionStore,
    nn: Neighbors,
    query_ids: np.ndarray,
    batch: int = 64,
    budget_bytes: int = 256 << 20,
) -> Neighbors:
    """Re-order each query's shortlist by the PR-MAC score of its regions against each candidate's.

    `regions`: every database image's (N, R, D) float16 regions, in memory, or a `RegionStore` read per chunk of
    queries: the regions of a chunk's queries and candidates (each image once) take at most ~`budget_bytes`.
    """
    indices = nn.indices.copy()
    scores = np.full(indices.shape, -np.inf, dtype=np.float32)
    lazy = isinstance(regions, RegionStore)
    per_query = int(np.prod(regions.shape[1:])) * 2 * (indices.shape[1] + 1)
    chunk = max(1, budget_bytes // per_query) if lazy else max(1, len(indices))
    with tqdm(total=len(indices), desc="PR-MAC re-rank", unit="query", disable=len(indices) < 200) as bar:
        for start in range(0, len(indices), chunk):
            block, qids = indices[start : start + chunk], np.asarray(query_ids[start : start + chunk])
            if lazy:  # this chunk's images, each read once: row i of `local` is image needed[i]
                needed = np.unique(np.concatenate([qids, block[block >= 0]]))
                local = torch.from_numpy(regions[needed])
            else:
                needed, local = None, torch.from_numpy(regions)

            def rows(ids, needed=needed):
                return ids if needed is None else np.searchsorted(needed, ids)

            for qi in range(len(block)):
                cand = block[qi][block[qi] >= 0]
                if len(cand) == 0:
                    continue
                qr = local[int(rows(qids[qi]))].float()
                c = rows(cand)
                s = np.concatenate(
                    [prmac_score(qr, local[c[b : b + batch]].float()).numpy() for b in range(0, len(c), batch)]
                )
                order = np.argsort(-s, kind="stable")
                indices[start + qi, : len(cand)] = cand[order]
                scores[start + qi, : len(cand)] = s[order]
            del local  # before the next chunk is read: one chunk's regions in memory at a time
            bar.update(len(block))
    return Neighbors(indices, scores)


def choose_whitening(
    options: RetrievalOptions, model_whitening: Whitening | None, regional: np.ndarray | None, glob: np.ndarray
) -> Whitening | None:
    """The whitening to apply: none, the model's own, or PCA fitted on this database's regional vectors.

    "auto" is the model's own when it carries one, else none. Callers pass `model_whitening` only for
    descriptors made by that model's weights (None otherwise), so auto never whitens another network's vectors.
    """
    if options.whitening == "none":
        return None
    if options.whitening == "auto":
        if model_whitening is not None:
            logger.info("applying the weights' own %d-d whitening (--whitening auto)", model_whitening.dim)
        return model_whitening
    if options.whitening == "model":
        if model_whitening is None:
            logger.info("the model carries no whitening: descriptors are used unwhitened")
        return model_whitening
    if options.whitening == "database":
        if isinstance(regional, RegionStore):  # a fixed-seed sample of the images' regions, not all of them
            vectors = regional.sample_vectors(WHITENING_SAMPLE)
        else:
            vectors = regional.reshape(-1, regional.shape[-1]) if regional is not None else glob
        if len(glob) <= options.whitening_dim:
            logger.info("database of %d images is too small to fit whitening; not whitened", len(glob))
            return None
        return fit_pca_whitening(vectors, options.whitening_dim)
    raise ValueError(f"unknown whitening mode {options.whitening!r}")


def retrieve(
    glob: np.ndarray,
    regional: np.ndarray | None,
    options: RetrievalOptions,
    query_ids: np.ndarray | None = None,
    whitening: Whitening | None = None,
    rmac_global: bool = False,
) -> Neighbors:
    """Find `num_matched` neighbours for the queries `query_ids` (default: every image) among all images.

    `glob` (N, D) and `regional` (N, R, D) are L2-normalised; `whitening` (if any) is applied to both.
    `regional` may be a `RegionStore` (large collections): read per query chunk, never whole.
    With `rmac_global`, the whitened global descriptor is rebuilt as R-MAC from the whitened regions.
    """
    options.validate()
    n = len(glob)
    if query_ids is None:
        query_ids = np.arange(n)
    lazy = isinstance(regional, RegionStore)
    if whitening is not None:
        if regional is not None:
            regional = regional.with_transform(whitening.apply) if lazy else whitening.apply(regional)
        if rmac_global and regional is not None:
            rmac = lambda r: rmac_from_regions(torch.from_numpy(r)).numpy()  # noqa: E731
            glob = regional.map_chunks(rmac) if lazy else rmac(regional)
        else:
            glob = whitening.apply(glob)
    glob = np.ascontiguousarray(glob, dtype=np.float32)
    k = min(options.num_matched, n - 1)
    if k <= 0:
        return Neighbors(np.zeros((len(query_ids), 0), np.int64), np.zeros((len(query_ids), 0), np.float32))
    rerank = options.rerank == "prmac" and regional is not None
    if options.rerank == "prmac" and regional is None:
        logger.warning("no regional descriptors: PR-MAC re-ranking skipped")
    depth = max(k, min(options.shortlist, n - 1)) if rerank else k
    index = build_index(glob, options)
    every = len(query_ids) == n and np.array_equal(query_ids, np.arange(n))
    queries = glob if every else glob[query_ids]  # every image a query: no copy of the descriptors
    refine = {"db": glob, "refine": options.refine}
    nn = search(index, queries, max(depth, options.query_expansion), query_ids, options.chunk_size, **refine)
    if options.query_expansion > 0:
        queries = alpha_query_expansion(queries, glob, nn, options.query_expansion, options.qe_alpha)
        nn = search(index, queries, depth, query_ids, options.chunk_size, desc="search (QE)", **refine)
    nn = Neighbors(nn.indices[:, :depth], nn.scores[:, :depth])
    if rerank:
        if not lazy:
            regional = np.ascontiguousarray(regional, dtype=np.float16)
        nn = rerank_prmac(regional, nn, query_ids)
    return Neighbors(nn.indices[:, :k], nn.scores[:, :k])
