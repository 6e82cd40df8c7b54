"""Training augmentation with PIL/torch only: random resized crops (+ flips) that move an image and its
overlap masks together, and random brightness / contrast / saturation.

A crop is a box in normalised image coordinates [0, 1]^2, so it applies unchanged to the photo (any
resolution, JPEG draft decoding included) and to a mask grid stretched over the whole image (GL3D's
convention): output pixel (u, v) samples image point x0 + (u + 0.5) / S (x1 - x0), the same point in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class AugmentOptions:
    """`size`: square training resolution (paper: 224). `scale`: crop area as a share of the image;
    `ratio`: crop aspect w/h in pixels. `flip`: horizontal flip probability. Colour factors are drawn
    uniformly in [1 - x, 1 + x]. `enabled=False`: the whole image resized to size x size, no colour change."""

    size: int = 224
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    enabled: bool = True


@dataclass(frozen=True)
class Crop:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1]
    flip: bool = False


def sample_crop(rng: np.random.Generator, width: int, height: int, o: AugmentOptions) -> Crop:
    """A random resized crop (torchvision's rule: area share in `scale`, log-uniform aspect in `ratio`,
    10 tries, else the whole image) and a flip."""
    flip = bool(rng.random() < o.flip)
    if not o.enabled:
        return Crop((0.0, 0.0, 1.0, 1.0), False)
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*o.scale)
        aspect = math.exp(rng.uniform(math.log(o.ratio[0]), math.log(o.ratio[1])))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            x0 = rng.uniform(0, width - w)
            y0 = rng.uniform(0, height - h)
            return Crop((x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height), flip)
    return Crop((0.0, 0.0, 1.0, 1.0), flip)


def load_cropped(path, crop: Crop, size: int) -> torch.Tensor:
    """Decode `path` (JPEGs at the smallest DCT scale that still covers the crop), crop and resize to
    size x size: (3, size, size) float in [0, 1]. EXIF orientation is not applied: masks and cameras
    (COLMAP) use the stored pixel grid."""
    x0, y0, x1, y1 = crop.box
    with Image.open(path) as im:
        full_w, full_h = im.size
        need = (max(1, math.ceil(size / max(x1 - x0, 1e-6))), max(1, math.ceil(size / max(y1 - y0, 1e-6))))
        if need[0] < full_w and need[1] < full_h:
            im.draft("RGB", need)
        im = im.convert("RGB")
        w, h = im.size
        out = im.resize((size, size), Image.BILINEAR, box=(x0 * w, y0 * h, x1 * w, y1 * h), reducing_gap=2.0)
    if crop.flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).float().div_(255.0)


def crop_mask(mask: np.ndarray, crop: Crop, size: int) -> torch.Tensor:
    """The (rows, cols) bool grid stretched over the image, sampled at the crop's output pixel centres:
    (size, size) bool, aligned pixel for pixel with `load_cropped`'s output."""
    rows, cols = mask.shape
    x0, y0, x1, y1 = crop.box
    u = x0 + (np.arange(size) + 0.5) / size * (x1 - x0)
    v = y0 + (np.arange(size) + 0.5) / size * (y1 - y0)
    ci = np.clip((u * cols).astype(np.int64), 0, cols - 1)
    ri = np.clip((v * rows).astype(np.int64), 0, rows - 1)
    out = np.asarray(mask, bool)[ri[:, None], ci[None, :]]
    if crop.flip:
        out = out[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(out))


def jitter_colour(x: torch.Tensor, rng: np.random.Generator, o: AugmentOptions) -> torch.Tensor:
    """Random brightness, contrast and saturation of an RGB (3, H, W) image in [0, 1], clamped."""
    if not o.enabled:
        return x
    grey_w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype)[:, None, None]
    b = rng.uniform(1 - o.brightness, 1 + o.brightness)
    c = rng.uniform(1 - o.contrast, 1 + o.contrast)
    s = rng.uniform(1 - o.saturation, 1 + o.saturation)
    x = x * b
    mean = (x * grey_w).sum(0).mean()
    x = (x - mean) * c + mean
    grey = (x * grey_w).sum(0, keepdim=True)
    x = (x - grey) * s + grey
    return x.clamp_(0.0, 1.0)
