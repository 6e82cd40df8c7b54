"""Extract global and regional CNN descriptors for a folder of images into an h5 file (resumable).

The whole image is used (resized so its long side is `resize`, never centre-cropped). From the last
feature map (`RetrievalModel.describe`): a global descriptor (the model's own pooling: MAC, GeM or R-MAC) and
the 35 R-MAC regional vectors for PR-MAC, stored unwhitened (retrieval picks the whitening).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import features_io
from .describing import (  # noqa: F401 (ImageFolder: API, re-exported)
    ExtractionOptions,
    ExtractionResult,
    ImageFolder,
    describe_batches,
    images_to_describe,
    pooling_of,
    resolve_device,
)
from .errors import MirrorError
from .images import check_names, list_images, resized_size  # noqa: F401 (resized_size: API)
from .io_utils import check_writable, output_lock
from .model import RetrievalModel, load_model
from .pooling import RMAC_STEPS

if TYPE_CHECKING:
    from .distributed import RayOptions

logger = logging.getLogger(__name__)


def weights_digest(model: RetrievalModel) -> str:
    """A short digest of the backbone's weights (the `weights_sha1` a descriptor file records)."""
    digest = hashlib.sha1()
    for key, value in sorted(model.backbone.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().float().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]


def extractor_signature(model: RetrievalModel, options: ExtractionOptions) -> dict:
    """What determines the stored descriptors: a file made with another signature is recomputed."""
    pooling = pooling_of(options, model)
    signature = {
        "model": model.name,
        "weights_sha1": weights_digest(model),
        "resize": options.resize,
        "pooling": pooling,
        "regional": options.regional,
        "rmac_steps": list(RMAC_STEPS),
    }
    if pooling == "gem":
        signature["gem_p"] = model.gem_p
    return signature


def made_by(path: str | Path, model: RetrievalModel) -> bool:
    """Whether the descriptor file `path` (mirror_sfm's) records the weights of `model` (name and digest), i.e.
    its vectors are provably that model's; False for files that record no weights or other ones."""
    recorded = features_io.read_extractor(path)
    return (
        bool(recorded) and recorded.get("weights_sha1") == weights_digest(model) and recorded.get("model") == model.name
    )


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
    model = model.for_inference()

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
