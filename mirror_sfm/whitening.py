"""Whitening of descriptors, saved beside the network: x -> P (x - mean), then L2.

Two ways to fit it: `fit_pca_whitening` (unsupervised: P projects on the top `dim` principal axes of a set of
vectors, each scaled by 1/sqrt(eigenvalue) when `whiten`) and `fit_learned_whitening` (supervised by matching
pairs: Radenović et al.'s learned whitening).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Whitening:
    mean: np.ndarray  # (D,)
    projection: np.ndarray  # (d, D)

    @property
    def dim(self) -> int:
        return int(self.projection.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whiten (..., D) vectors and L2-normalise them; returns float32 (..., d)."""
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.projection.T
        return y / (np.linalg.norm(y, axis=-1, keepdims=True) + 1e-6)

    def to_dict(self) -> dict:
        return {"mean": self.mean.astype(np.float32), "projection": self.projection.astype(np.float32)}

    @classmethod
    def from_dict(cls, d: dict) -> Whitening:
        return cls(np.asarray(d["mean"], dtype=np.float32), np.asarray(d["projection"], dtype=np.float32))


def fit_pca_whitening(
    x: np.ndarray, dim: int = 256, whiten: bool = True, eps: float = 1e-6, max_samples: int = 200_000, seed: int = 0
) -> Whitening:
    """Fit PCA(-whitening) to rows of `x` (N, D); `dim` is capped at min(N - 1, D).

    At most `max_samples` rows (sampled with a fixed seed) are used, so the cost stays bounded.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("PCA whitening needs at least two vectors")
    if x.shape[0] > max_samples:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_samples, replace=False)]
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(1, x.shape[0] - 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    dim = int(min(dim, x.shape[0] - 1, x.shape[1]))
    eigval, eigvec = eigval[order[:dim]], eigvec[:, order[:dim]]
    proj = eigvec.T
    if whiten:
        proj = proj / np.sqrt(np.maximum(eigval, 0) + eps)[:, None]
    return Whitening(mean.astype(np.float32), proj.astype(np.float32))


def fit_learned_whitening(
    x: np.ndarray,
    pairs: np.ndarray,
    dim: int = 256,
    pre_dim: int | None = None,
    shrinkage: float = 0.1,
    max_samples: int = 200_000,
    seed: int = 0,
) -> Whitening:
    """Learned whitening from matching pairs (Radenović et al., cnnimageretrieval-pytorch's `whitenlearn`).

    `x` (N, D): descriptors (global or regional vectors); `pairs` (P, 2): row indices into `x` of matching
    pairs. With m the mean of the pairs' first vectors and S the covariance of the pair differences
    x[i] - x[j], the vectors are whitened by S^-1/2 (P = inverse of S's Cholesky factor, so what tells a pair
    apart is scaled down and what differs between non-matching vectors stays), then rotated onto the
    principal axes of all whitened vectors P (x - m), keeping the top `dim` (not rescaled).

    Few pairs, or pairs spanning few distinct vectors, leave S singular (its rank is at most the number of
    distinct vectors in the pairs): `pre_dim` first projects every vector on its top `pre_dim` principal axes
    (plain PCA of `x`; None: no reduction when `pre_dim` >= D), and S is shrunk towards a multiple of the identity,
    S <- (1 - shrinkage) S + shrinkage tr(S)/d I. The result is one affine map, returned as the `Whitening` that
    PCA whitening returns, so the weights file, retrieval and `--whitening model` take it unchanged.
    At most `max_samples` rows of `x` (fixed seed) feed the PCA steps; every pair feeds S.
    """
    x = np.asarray(x, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("learned whitening needs at least two vectors")
    if len(pairs) == 0:
        raise ValueError("learned whitening needs at least one matching pair")
    if pairs.min() < 0 or pairs.max() >= len(x):
        raise ValueError(f"pair index out of range for {len(x)} vectors")
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    n, d_in = x.shape
    sample = x
    if n > max_samples:
        sample = x[np.random.default_rng(seed).choice(n, max_samples, replace=False)]
    # 1. optional dimension reduction: x -> U^T (x - mu), U the top pre_dim principal axes of x
    if pre_dim is not None and pre_dim < d_in:
        pca = fit_pca_whitening(sample, pre_dim, whiten=False, max_samples=max_samples, seed=seed)
        base_mean, base = pca.mean.astype(np.float64), pca.projection.astype(np.float64)  # (D,), (d', D)
    else:
        base_mean, base = np.zeros(d_in), np.eye(d_in)
    d = base.shape[0]

    def reduce(rows: np.ndarray) -> np.ndarray:
        return (rows - base_mean) @ base.T

    # 2. S: covariance of matching-pair differences (chunked: regional pairs run to the hundreds of thousands)
    s = np.zeros((d, d))
    first_sum = np.zeros(d)
    for start in range(0, len(pairs), 65536):
        chunk = pairs[start : start + 65536]
        a, b = reduce(x[chunk[:, 0]]), reduce(x[chunk[:, 1]])
        diff = a - b
        s += diff.T @ diff
        first_sum += a.sum(axis=0)
    s /= len(pairs)
    m = first_sum / len(pairs)
    s = (1.0 - shrinkage) * s + shrinkage * (np.trace(s) / d) * np.eye(d)
    p = np.linalg.inv(_cholesky(s))  # P S P^T = I
    # 3. rotate onto the principal axes of the whitened vectors P (x - m); keep the top `dim`
    y = (reduce(sample) - m) @ p.T
    eigval, eigvec = np.linalg.eigh(y.T @ y / len(y))
    order = np.argsort(eigval)[::-1][: int(min(dim, d))]
    proj_reduced = eigvec[:, order].T @ p  # (dim, d')
    # one affine map of the input: proj_reduced (U^T (x - mu) - m) = projection (x - mean), mean = mu + U m
    projection = proj_reduced @ base
    mean = base_mean + base.T @ m  # base has orthonormal rows (the identity without reduction)
    return Whitening(mean.astype(np.float32), projection.astype(np.float32))


def _cholesky(s: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of s, adding a growing multiple of the mean diagonal until s is positive definite
    (whitenlearn's `cholesky`, scaled to s)."""
    scale = max(float(np.trace(s)) / len(s), 1e-12)
    alpha = 0.0
    while True:
        try:
            return np.linalg.cholesky(s + alpha * scale * np.eye(len(s)))
        except np.linalg.LinAlgError:
            alpha = 1e-10 if alpha == 0.0 else alpha * 10.0
            if alpha > 1.0:
                raise ValueError("the pair-difference covariance is not positive definite") from None
