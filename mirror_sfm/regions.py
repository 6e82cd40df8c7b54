"""Regional descriptors read from the descriptor file on demand, for PR-MAC re-ranking of large collections.

PR-MAC needs each image's R regional vectors (35 x 1280 fp16 = 90 kB an image at 384 px: 90 GB for 1M images),
which above `RetrievalOptions.exact_max` are not loaded whole: a `RegionStore` reads the rows asked for (one query
chunk's queries and candidates at a time, `retrieval.rerank_prmac`) from the h5, applying the whitening, if any,
as it reads. Memory is then bounded by the chunk, not by N; every image's regions are read once per query chunk
whose shortlists hold it (random reads: with regions on a slow disk this is I/O-bound).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from .errors import MirrorError
from .features_io import list_h5_names, read_descriptors

logger = logging.getLogger(__name__)

REGIONAL = "regional_descriptors"


class RegionStore:
    """(N, R, D) regional descriptors of `names` in the mirror_sfm descriptor file `path`, read as `store[ids]`
    (an int array, list or slice -> float16 array). Use as a context manager, or call `close`."""

    def __init__(self, path: str | Path, names: list[str]):
        self.path, self.names = Path(path), list(names)
        self.transform: Callable[[np.ndarray], np.ndarray] | None = None
        self._file: h5py.File | None = None
        f = self._open()
        missing = next((n for n in self.names if n not in f or REGIONAL not in f[n]), None)
        if missing is not None:
            raise MirrorError(f"{self.path} holds no regional descriptors for {missing} (needed for PR-MAC re-ranking)")
        first = f[self.names[0]][REGIONAL]
        self._stored_shape, self._dtype = first.shape, first.dtype
        self.shape = (len(self.names), *first.shape)

    def __len__(self) -> int:
        return len(self.names)

    def _open(self) -> h5py.File:
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise MirrorError(f"cannot read descriptor file {self.path}: {exc}") from None
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RegionStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, ids) -> np.ndarray:
        """Rows `ids` (ints or a slice) as stored, passed through the transform (float32 when there is one)."""
        if isinstance(ids, slice):
            ids = range(*ids.indices(len(self.names)))
        f = self._open()
        ids = np.asarray(ids, dtype=np.int64).ravel()
        rows = np.empty((len(ids), *self._stored_shape), dtype=self._dtype)  # filled in place: no second copy
        for row, i in zip(rows, ids):
            f[self.names[int(i)]][REGIONAL].read_direct(row)
        return rows if self.transform is None else self.transform(rows)

    def __getitem__(self, ids) -> np.ndarray:
        return np.ascontiguousarray(self.read(ids), dtype=np.float16)

    def with_transform(self, transform: Callable[[np.ndarray], np.ndarray]) -> RegionStore:
        """The same regions, every read passed through `transform` (e.g. a whitening) after this store's own."""
        other = copy.copy(self)
        other._file = None
        inner = self.transform
        other.transform = transform if inner is None else (lambda x: transform(inner(x)))
        other.shape = (len(self.names), *other.read([0]).shape[1:])
        return other

    def sample_vectors(self, max_vectors: int, seed: int = 0) -> np.ndarray:
        """Regional vectors (M, D) of a fixed-seed random sample of the images: ~`max_vectors` rows at most."""
        count = min(len(self.names), max(2, -(-max_vectors // self.shape[1])))
        ids = np.sort(np.random.default_rng(seed).choice(len(self.names), count, replace=False))
        return self.read(ids).reshape(-1, self.shape[-1])

    def map_chunks(self, fn: Callable[[np.ndarray], np.ndarray], chunk: int = 1024) -> np.ndarray:
        """`fn` of every image's regions (as `read` gives them), `chunk` images at a time, concatenated."""
        return np.concatenate([fn(self.read(slice(s, s + chunk))) for s in range(0, len(self.names), chunk)])


def read_for_retrieval(
    path: str | Path, names: list[str] | None, rerank: str, exact_max: int
) -> tuple[list[str], np.ndarray, np.ndarray | RegionStore | None]:
    """Names, global descriptors and, for PR-MAC (`rerank` prmac), the regional ones of a mirror_sfm descriptor
    file: in memory up to `exact_max` images, a `RegionStore` (read per query chunk) above."""
    prmac = rerank == "prmac"
    lazy = regions_on_demand(rerank, len(names) if names is not None else len(list_h5_names(path)), exact_max)
    names, glob, regional = read_descriptors(path, names, regional=prmac and not lazy)
    return names, glob, (lazy_regions(path, names, exact_max) if lazy else regional)


def regions_on_demand(rerank: str, count: int, exact_max: int) -> bool:
    """Whether PR-MAC reads `count` images' regions per query chunk (a `RegionStore`) instead of all at once."""
    return rerank == "prmac" and count > exact_max


def lazy_regions(path: str | Path, names: list[str], exact_max: int) -> RegionStore:
    """A `RegionStore` of `names` in `path` (a MirrorError when one lacks regions), logged as such."""
    store = RegionStore(path, names)
    logger.info(
        "%d images > exact_max %d: PR-MAC reads the regional descriptors (%.1f GB in all) from %s per query chunk,"
        " each image once per chunk whose shortlists hold it (--rerank none skips PR-MAC)",
        len(names),
        exact_max,
        np.prod(store.shape) * 2 / 1e9,
        path,
    )
    return store
