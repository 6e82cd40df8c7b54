"""Find and read images: any common format, EXIF orientation applied, converted to 8-bit RGB."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import MirrorError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".ppm", ".pgm", ".gif"}


def list_images(image_dir: str | Path) -> list[str]:
    """Return the image names under `image_dir` (recursive, POSIX paths relative to it, sorted).

    Raises MirrorError when the folder is missing or holds no image, or when a name contains
    whitespace, which COLMAP's pair-file format cannot carry. Names that are not valid UTF-8
    (which neither pair files nor h5 group names can carry) are skipped with one warning that
    lists them as bytes.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise MirrorError(f"image folder not found: {image_dir}")
    names, undecodable = [], []
    for p in image_dir.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file():
            name = p.relative_to(image_dir).as_posix()
            (names if _is_utf8(name) else undecodable).append(name)
    names.sort()
    if undecodable:
        logger.warning(
            "skipping %d image(s) whose file name is not valid UTF-8 (COLMAP pair files and the "
            "descriptor file cannot carry it; rename them): %s",
            len(undecodable),
            ", ".join(repr(os.fsencode(n)) for n in sorted(undecodable)),
        )
    if not names:
        skipped = f"; {len(undecodable)} skipped for names that are not valid UTF-8" if undecodable else ""
        raise MirrorError(
            f"no images found in {image_dir} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}{skipped})"
        )
    check_names(names, image_dir)
    return names


def _is_utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python maps them to lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_names(names: list[str], image_dir: str | Path = "") -> None:
    """Reject names with whitespace (COLMAP/hloc pair files split lines on spaces) or not valid UTF-8."""
    for name in names:
        if not _is_utf8(name):
            raise MirrorError(
                f"image name is not valid UTF-8, which COLMAP pair files cannot carry: "
                f"{os.fsencode(Path(image_dir) / name)!r} (rename it)"
            )
        if any(c.isspace() for c in name):
            raise MirrorError(
                f"image name contains whitespace, which COLMAP pair files cannot carry: "
                f"{Path(image_dir) / name} (rename it)"
            )


EMPTY_FILE = "empty file (0 bytes)"
RESIZE_REDUCING_GAP = 3.0  # resize first by an integer factor down to >= 3x the target, then bilinear


def resized_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(W, H) scaled so the long side is `long_side` (0 keeps the size)."""
    if long_side <= 0:
        return width, height
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_image_rgb(path: str | Path, long_side: int = 0) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB with its EXIF orientation applied.

    `long_side` > 0: resized so its long side is `long_side` (see `decode_image`; a large JPEG is
    then decoded at a reduced size). Grey, palette, 16-bit, CMYK and alpha images are converted.
    Raises MirrorError when the file cannot be decoded (zero bytes, truncated, not an image).
    """
    return decode_image(path, long_side)[0]


def decode_image(path: str | Path, long_side: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """(HxWx3 uint8 RGB, (W, H) of the full image), EXIF orientation applied, resized when `long_side` > 0.

    The resized size is `resized_size` of the full image's size, the resampling bilinear with a
    reducing gap of 3 (as extraction always did). A JPEG is decoded in Pillow's draft mode at the
    smallest 1/2, 1/4 or 1/8 scale that still leaves 3x the target size (the reducing gap), so a
    100-MP photo never occupies 300 MB: the result has the same size and orientation as a full
    decode followed by the same resize, and nearly the same pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise MirrorError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise MirrorError(f"cannot read image {path}: {EMPTY_FILE}")
    try:
        with Image.open(path) as img:
            full_w, full_h = img.size  # stored orientation
            if _swaps_sides(img):
                full_w, full_h = full_h, full_w
            size = resized_size(full_w, full_h, long_side)
            if long_side > 0:  # draft works in stored orientation; the scale is the same either way
                scale = min(1.0, RESIZE_REDUCING_GAP * max(size) / max(full_w, full_h))
                img.draft("RGB", (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
            img = _decode_opened(img)
            if long_side > 0:
                if img.size != size:
                    img = img.resize(size, Image.BILINEAR, reducing_gap=RESIZE_REDUCING_GAP)
            return np.asarray(img), (full_w, full_h)
    except MirrorError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise MirrorError(f"cannot read image {path}: {_reason(exc, path)}") from None


def unreadable_reason(path: str | Path) -> str | None:
    """Why `path` cannot be used as an image, or None when it can: the one check every step shares.

    A file passes when extraction could read it: it is not empty and decodes completely (a JPEG
    at 1/8 scale, which still reads every byte, so a truncated file fails), EXIF orientation and
    the RGB conversion included.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return EMPTY_FILE
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))  # smallest scale: cheap, and a truncated JPEG still fails
            _decode_opened(img)
    except Exception as exc:  # PIL raises many types for corrupt files
        return _reason(exc, path)
    return None


def _decode_opened(img: Image.Image) -> Image.Image:
    """Load an opened image completely, apply its EXIF orientation, convert to 8-bit RGB."""
    img.load()
    return to_rgb8(ImageOps.exif_transpose(img))


def _swaps_sides(img: Image.Image) -> bool:
    """Whether the image's EXIF orientation turns it by 90 degrees (what exif_transpose will do)."""
    return img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)


def _reason(exc: Exception, path: Path) -> str:
    if isinstance(exc, MirrorError):
        return str(exc)
    reason = str(exc).replace(str(path), "").replace("''", "").strip(" :") or "undecodable"
    return f"{exc.__class__.__name__}: {reason}"


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
