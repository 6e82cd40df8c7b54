"""PCA whitening of descriptors: learned from a set of vectors, saved beside the network.

x -> P (x - mean), then L2. P projects on the top `dim` principal axes, each scaled by 1/sqrt(eigenvalue)
when `whiten` (plain PCA otherwise).
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
