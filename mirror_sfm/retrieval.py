"""Nearest-neighbour search over global descriptors, PR-MAC re-ranking and alpha query expansion.

Memory stays bounded: queries go to faiss in chunks (no dense N x N matrix). Exact inner-product search
up to `exact_max` database images; an IVF index above that. faiss-gpu is used when it and a GPU exist.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from tqdm import tqdm

from .pooling import prmac_score, rmac_from_regions
from .whitening import Whitening, fit_pca_whitening

logger = logging.getLogger(__name__)


@dataclass
class RetrievalOptions:
    """How neighbours are found. Defaults chosen on held-out scenes (benchmarks/RESULTS.md).

    Attributes:
        num_matched: neighbours kept per query image (K).
        rerank: re-rank a shortlist by PR-MAC regional matching: prmac | none.
        shortlist: CNN candidates re-ranked by PR-MAC per query.
        query_expansion: alpha query expansion over this many top neighbours (0: off).
        qe_alpha: the exponent of alpha query expansion.
        whitening: descriptor whitening: none | model (the weights' own) | database (PCA fitted on these images).
        whitening_dim: output dimension of 'database' whitening.
        exact_max: exact search up to this many database images, faiss IVF above.
        ivf_nprobe: IVF cells searched per query.
        chunk_size: queries per faiss call (bounds memory).
        use_gpu: faiss on the GPU: auto | yes | no.
    """

    num_matched: int = 20
    rerank: str = "prmac"
    shortlist: int = 100
    query_expansion: int = 0
    qe_alpha: float = 3.0
    whitening: str = "none"
    whitening_dim: int = 256
    exact_max: int = 100_000
    ivf_nprobe: int = 32
    chunk_size: int = 2048
    use_gpu: str = "auto"


@dataclass
class Neighbors:
    """Per query, database indices in rank order with their scores (self excluded)."""

    indices: np.ndarray  # (Q, k) int64, -1 where fewer than k exist
    scores: np.ndarray  # (Q, k) float32


def faiss_gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(db: np.ndarray, options: RetrievalOptions) -> faiss.Index:
    """Inner-product index over L2-normalised rows: flat (exact) or IVF for large databases."""
    n, d = db.shape
    db = np.ascontiguousarray(db, dtype=np.float32)
    if n <= options.exact_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(min(65536, max(64, 4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = db[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)]
        logger.info("training IVF index (%d lists) on %d of %d vectors", nlist, len(train), n)
        index.train(train)
        index.nprobe = options.ivf_nprobe
    use_gpu = options.use_gpu == "yes" or (options.use_gpu == "auto" and faiss_gpu_available())
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(db)
    return index


def search(
    index: faiss.Index, queries: np.ndarray, k: int, query_ids: np.ndarray | None, chunk_size: int, desc: str = "search"
) -> Neighbors:
    """Top-k by inner product per query, excluding the query itself (`query_ids[i]` = its database index)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    extra = 1 if query_ids is not None else 0
    kk = min(k + extra, index.ntotal)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    for start in tqdm(range(0, len(q), chunk_size), desc=desc, unit="chunk", disable=len(q) <= chunk_size):
        scores, idx = index.search(q[start : start + chunk_size], kk)
        for row in range(len(idx)):
            keep = idx[row] >= 0
            if query_ids is not None:
                keep &= idx[row] != query_ids[start + row]
            sel_i, sel_s = idx[row][keep][:k], scores[row][keep][:k]
            out_i[start + row, : len(sel_i)] = sel_i
            out_s[start + row, : len(sel_s)] = sel_s
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
    q_regions: np.ndarray, db_regions: np.ndarray, nn: Neighbors, query_ids: np.ndarray, batch: int = 64
) -> Neighbors:
    """Re-order each query's shortlist by the PR-MAC score of its regions against each candidate's."""
    indices = nn.indices.copy()
    scores = np.full(indices.shape, -np.inf, dtype=np.float32)
    db_t = torch.from_numpy(db_regions)
    for qi in tqdm(range(len(indices)), desc="PR-MAC re-rank", unit="query", disable=len(indices) < 200):
        cand = indices[qi][indices[qi] >= 0]
        if len(cand) == 0:
            continue
        qr = torch.from_numpy(q_regions[qi]).float()
        s = np.concatenate(
            [prmac_score(qr, db_t[cand[b : b + batch]].float()).numpy() for b in range(0, len(cand), batch)]
        )
        order = np.argsort(-s, kind="stable")
        indices[qi, : len(cand)] = cand[order]
        scores[qi, : len(cand)] = s[order]
    return Neighbors(indices, scores)


def choose_whitening(
    options: RetrievalOptions, model_whitening: Whitening | None, regional: np.ndarray | None, glob: np.ndarray
) -> Whitening | None:
    """The whitening to apply: none, the model's own, or PCA fitted on this database's regional vectors."""
    if options.whitening == "none":
        return None
    if options.whitening == "model":
        if model_whitening is None:
            logger.info("the model carries no whitening: descriptors are used unwhitened")
        return model_whitening
    if options.whitening == "database":
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
    With `rmac_global`, the whitened global descriptor is rebuilt as R-MAC from the whitened regions.
    """
    n = len(glob)
    if query_ids is None:
        query_ids = np.arange(n)
    if whitening is not None:
        if regional is not None:
            regional = whitening.apply(regional)
        glob = (
            rmac_from_regions(torch.from_numpy(regional)).numpy()
            if (rmac_global and regional is not None)
            else whitening.apply(glob)
        )
    glob = np.ascontiguousarray(glob, dtype=np.float32)
    k = min(options.num_matched, n - 1)
    if k <= 0:
        return Neighbors(np.zeros((len(query_ids), 0), np.int64), np.zeros((len(query_ids), 0), np.float32))
    rerank = options.rerank == "prmac" and regional is not None
    if options.rerank == "prmac" and regional is None:
        logger.warning("no regional descriptors: PR-MAC re-ranking skipped")
    depth = max(k, min(options.shortlist, n - 1)) if rerank else k
    index = build_index(glob, options)
    queries = glob[query_ids]
    nn = search(index, queries, max(depth, options.query_expansion), query_ids, options.chunk_size)
    if options.query_expansion > 0:
        queries = alpha_query_expansion(queries, glob, nn, options.query_expansion, options.qe_alpha)
        nn = search(index, queries, depth, query_ids, options.chunk_size, desc="search (QE)")
    nn = Neighbors(nn.indices[:, :depth], nn.scores[:, :depth])
    if rerank:
        regional = np.ascontiguousarray(regional, dtype=np.float16)
        nn = rerank_prmac(regional[query_ids], regional, nn, query_ids)
    return Neighbors(nn.indices[:, :k], nn.scores[:, :k])
