"""Find and read images: any common format, EXIF orientation applied, converted to 8-bit RGB."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import MirrorError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm", ".gif"}


def list_images(image_dir: str | Path) -> list[str]:
    """Return the image names under `image_dir` (recursive, POSIX paths relative to it, sorted).

    Raises MirrorError when the folder is missing or holds no image, or when a name contains
    whitespace, which COLMAP's pair-file format cannot carry.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise MirrorError(f"image folder not found: {image_dir}")
    names = sorted(
        p.relative_to(image_dir).as_posix()
        for p in image_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    if not names:
        raise MirrorError(f"no images found in {image_dir} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    check_names(names, image_dir)
    return names


def check_names(names: list[str], image_dir: str | Path = "") -> None:
    """Reject names with whitespace: COLMAP/hloc pair files split lines on spaces."""
    for name in names:
        if any(c.isspace() for c in name):
            raise MirrorError(
                f"image name contains whitespace, which COLMAP pair files cannot carry: "
                f"{Path(image_dir) / name} (rename it)"
            )


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB with its EXIF orientation applied.

    Grey, palette, 16-bit, CMYK and alpha images are converted. Raises MirrorError when the
    file cannot be decoded (zero bytes, truncated, not an image).
    """
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise MirrorError(f"cannot read image {path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_rgb8(img)
            return np.asarray(img)
    except MirrorError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        reason = str(exc).replace(str(path), "").replace("''", "").strip(" :") or "undecodable"
        raise MirrorError(f"cannot read image {path}: {exc.__class__.__name__}: {reason}") from None


def to_rgb8(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit and float images are rescaled to their range)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16") and hi > 255:
            arr = arr / 257.0
        elif hi > 255 or lo < 0 or img.mode == "F":
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img
