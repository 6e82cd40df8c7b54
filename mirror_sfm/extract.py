"""Extract global and regional CNN descriptors for a folder of images into an h5 file (resumable).

The whole image is used (resized so its long side is `resize`, never centre-cropped). From the last
feature map (`RetrievalModel.describe`): a global descriptor (the model's own pooling: MAC, GeM or R-MAC) and
the 35 R-MAC regional vectors for PR-MAC, stored unwhitened (retrieval picks the whitening).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import features_io
from .errors import MirrorError
from .images import check_names, decode_image, list_images, resized_size  # noqa: F401 (resized_size: API)
from .io_utils import check_writable, output_lock
from .model import RetrievalModel, check_pooling, load_model
from .pooling import RMAC_STEPS

if TYPE_CHECKING:
    from .distributed import RayOptions

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


def extractor_signature(model: RetrievalModel, options: ExtractionOptions) -> dict:
    """What determines the stored descriptors: a file made with another signature is recomputed."""
    digest = hashlib.sha1()
    for key, value in sorted(model.backbone.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().float().numpy().tobytes()[:4096])
    pooling = pooling_of(options, model)
    signature = {
        "model": model.name,
        "weights_sha1": digest.hexdigest()[:16],
        "resize": options.resize,
        "pooling": pooling,
        "regional": options.regional,
        "rmac_steps": list(RMAC_STEPS),
    }
    if pooling == "gem":
        signature["gem_p"] = model.gem_p
    return signature


@torch.no_grad()
def extract(
    image_dir: str | Path,
    output: str | Path,
    options: ExtractionOptions | None = None,
    image_names: list[str] | None = None,
    model: RetrievalModel | None = None,
    ray: RayOptions | None = None,
) -> ExtractionResult:
    """Describe every image of `image_dir` (or `image_names`) into the h5 file `output`.

    Images already stored with the same size and mtime are skipped; an interrupted run resumes from
    `output`.partial; the final file appears only when the run completes. Unreadable images are
    reported once each and skipped. An output that cannot be written, or that another run is writing
    now (see `io_utils.output_lock`: this run stops at once, it does not wait), is a MirrorError
    before any work; so is a disk that fills up, which keeps the finished images for a re-run.
    `ray` with an address: the images are described in shards by the workers of a Ray cluster
    (`distributed.extract_on_ray`: same file, finished shards kept in `output`.shards/ for a resume).
    """
    options = options or ExtractionOptions()
    image_dir, output = Path(image_dir), Path(output)
    check_writable(output)
    if image_names is None:
        image_names = list_images(image_dir)
    else:
        check_names(image_names, image_dir)
    on_ray = ray is not None and bool(ray.address)
    if on_ray:
        from .distributed import extract_on_ray, import_ray

        import_ray()  # without Ray installed: one line, before the model is loaded
    model = model or load_model(options.weights)
    device = torch.device("cpu") if on_ray else resolve_device(options.device)  # the workers pick their own
    model = model.to(device).eval()
    signature = extractor_signature(model, options)

    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output):
        if on_ray:
            result = extract_on_ray(image_dir, output, options, image_names, model, signature, ray)
        else:
            result = _extract_locked(image_dir, output, options, image_names, model, device, signature)
    if result.num_extracted + result.num_cached + result.num_resumed == 0:
        raise MirrorError(f"no readable image in {image_dir} ({len(result.skipped)} unreadable)")
    logger.info(
        "described %d images (%d cached, %d from finished shards, %d unreadable) -> %s",
        result.num_extracted,
        result.num_cached,
        result.num_resumed,
        len(result.skipped),
        output,
    )
    return result


def _extract_locked(
    image_dir: Path,
    output: Path,
    options: ExtractionOptions,
    image_names: list[str],
    model: RetrievalModel,
    device: torch.device,
    signature: dict,
) -> ExtractionResult:
    """The extraction proper, run while this process holds `output`'s lock."""
    f = features_io.open_work_file(output, signature)
    result = ExtractionResult(output, len(image_names), 0, 0)
    failed = True
    try:
        todo, result.num_cached = images_to_describe(f, output, image_dir, image_names)
        for records in describe_batches(image_dir, list(todo), options, model, device, result.skipped):
            features_io.write_batch(
                f, output, [(name, glob, reg, size, todo[name]) for name, glob, reg, size in records]
            )
            result.num_extracted += len(records)
        failed = False
    finally:
        features_io.close_work_file(f, output, failed)
    features_io.finish_work_file(output)
    return result


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
