"""Describing images with the CNN in batches, shared by the single-process extraction and the Ray workers.

`ExtractionOptions` (how descriptors are computed), the decoding dataset, the device choice, which images a
descriptor file still lacks (`images_to_describe`) and the batched pass itself (`describe_batches`). `extract`
writes what it yields into one work file; a Ray worker (`distributed`) writes it into a shard file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import features_io
from .errors import MirrorError
from .images import decode_image
from .model import RetrievalModel, check_pooling

logger = logging.getLogger(__name__)


@dataclass
class ExtractionOptions:
    """How descriptors are computed. Defaults chosen on held-out scenes (benchmarks/RESULTS.md).

    Attributes:
        resize: long side in px the whole image is resized to (never cropped; 384 ranked best and is fastest).
        pooling: global descriptor: model (the weights' own pooling; MAC for ImageNet) | mac | gem | rmac.
        regional: also store the 35 R-MAC regional vectors (needed by PR-MAC re-ranking).
        weights: 'default' (shipped fine-tuned weights, else ImageNet), 'imagenet', or a weights file path.
        batch_size: images per forward pass (consecutive images of one size are batched).
        device: auto | cpu | cuda.
        num_workers: image decoding processes (0: decode in the main process).
    """

    resize: int = 384
    pooling: str = "model"
    regional: bool = True
    weights: str = "default"
    batch_size: int = 4
    device: str = "auto"
    num_workers: int = 1


@dataclass
class ExtractionResult:
    path: Path
    num_images: int
    num_extracted: int
    num_cached: int
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable image name -> reason
    num_resumed: int = 0  # Ray: images taken from the shards a killed run had finished (not described again)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MirrorError("--device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(device)


class ImageFolder(Dataset):
    """Decoded, resized images as (3, H, W) float tensors in [0, 1]; unreadable ones yield the error."""

    def __init__(self, root: Path, names: list[str], resize: int):
        self.root, self.names, self.resize = root, names, resize

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        name = self.names[i]
        try:
            rgb, size = decode_image(self.root / name, self.resize)  # a large JPEG is decoded at reduced size
        except MirrorError as exc:
            return name, None, None, str(exc)
        tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)
        return name, tensor, size, None


def pooling_of(options: ExtractionOptions, model: RetrievalModel) -> str:
    """The global pooling extraction uses: `options.pooling`, or the model's own for "model"."""
    return check_pooling(model.pooling if options.pooling == "model" else options.pooling)


def images_to_describe(
    f: h5py.File, output: Path, image_dir: Path, image_names: list[str]
) -> tuple[dict[str, tuple[int, int]], int]:
    """({name: file signature} of the images the work file `f` lacks or holds stale, in `image_names` order,
    the number already stored fresh). A missing image is a MirrorError naming it."""
    todo: dict[str, tuple[int, int]] = {}
    cached = 0
    for name in image_names:
        path = image_dir / name
        if not path.is_file():
            raise MirrorError(f"image not found: {path}")
        file_sig = features_io.file_signature(path)
        if features_io.is_fresh(f, name, file_sig):
            cached += 1
        else:
            todo[name] = file_sig
    if cached:
        logger.info("%d of %d images already described in %s", cached, len(image_names), output)
    return todo, cached


Record = tuple[str, np.ndarray, "np.ndarray | None", tuple[int, int]]  # name, global, regional, image size (W, H)


def describe_batches(
    image_dir: Path,
    names: list[str],
    options: ExtractionOptions,
    model: RetrievalModel,
    device: torch.device,
    skipped: dict[str, str],
    progress: bool = True,
) -> Iterator[list[Record]]:
    """Describe `names` (decoded by `options.num_workers` processes, consecutive images of one size batched):
    yields each batch's records as computed; unreadable images are logged once and added to `skipped`."""
    pooling = pooling_of(options, model)
    loader = DataLoader(
        ImageFolder(image_dir, names, options.resize),
        batch_size=None,
        shuffle=False,
        num_workers=options.num_workers if len(names) > 1 else 0,
    )
    batch: list = []

    def run() -> list[Record]:
        with torch.no_grad():
            images = torch.stack([t for _, t, _ in batch]).to(device)
            glob, reg = model.describe(images, regional=options.regional, pooling=pooling)
        glob, reg = glob.cpu().numpy(), (reg.cpu().numpy() if reg is not None else None)
        records = [(name, glob[k], None if reg is None else reg[k], size) for k, (name, _, size) in enumerate(batch)]
        batch.clear()
        return records

    for name, tensor, size, error in tqdm(
        loader, total=len(names), desc="describe images", unit="img", disable=not (progress and names)
    ):
        if error is not None:
            logger.warning("skipping unreadable image: %s", error)
            skipped[name] = error
            continue
        if batch and (tensor.shape != batch[0][1].shape or len(batch) >= options.batch_size):
            yield run()
        batch.append((name, tensor, size))
    if batch:
        yield run()
