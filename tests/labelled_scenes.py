"""Tiny labelled scenes for training tests, made in a few milliseconds without rendering.

A scene is a random colour texture (the "surface"); views are windows on it sliding along a row, saved
as JPEGs. Each view's element map (which 5x5-texel surface cell each ray-grid pixel sees) goes through
the gtgen library exactly as a rendered scene would: mesh overlap, combined ratios, positives, masks,
GL3D files and triplets.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gtgen import gl3d
from gtgen.masks import MaskOptions, mask_png_name, overlapping_pairs, pair_masks, write_mask_png
from gtgen.ratios import combined_ratios, directional_ratios, incidence_from_sets
from gtgen.triplets import TripletOptions, build_manifest, positive_pairs, select_positives, write_manifest
from gtgen.visibility import mesh_overlap

CELL = 5  # texels per surface element
WINDOW = (200, 150)  # view window on the texture, texels (w, h)
IMAGE = (128, 96)  # saved image size
GRID = (WINDOW[1] // CELL, WINDOW[0] // CELL)  # element map (rows, cols): one pixel per element
PNG_SIZE = (24, 32)


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth random colour blobs plus random rectangles: distinct and matchable."""
    coarse = rng.uniform(0, 255, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).copy()
    for _ in range(40):
        x, y = rng.integers(0, width - 20), rng.integers(0, height - 20)
        w, h = rng.integers(6, 30), rng.integers(6, 30)
        img[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return img


def make_scene(out: Path, seed: int, num_views: int = 12, step: int = 30, image_dir: str | None = None) -> Path:
    """Write a labelled scene to `out` (images under out/images unless `image_dir`); returns `out`."""
    rng = np.random.default_rng(seed)
    width = WINDOW[0] + step * (num_views - 1) + 2 * CELL
    height = WINDOW[1] + 4 * CELL
    tex = texture(rng, width, height)
    images = Path(image_dir) if image_dir else out / "images"
    images.mkdir(parents=True, exist_ok=True)
    cols_total = width // CELL
    names, maps, tracks = [], [], []
    for k in range(num_views):
        x0 = k * step
        y0 = CELL * int(rng.integers(0, 4))
        name = f"{k:03d}.jpg"
        view = tex[y0 : y0 + WINDOW[1], x0 : x0 + WINDOW[0]]
        Image.fromarray(view).resize(IMAGE, Image.BILINEAR).save(images / name, quality=90)
        rows = (y0 + CELL * np.arange(GRID[0]) + CELL // 2) // CELL
        cols = (x0 + CELL * np.arange(GRID[1]) + CELL // 2) // CELL
        maps.append((rows[:, None] * cols_total + cols[None, :]).astype(np.int32))
        tracks.append(np.unique(maps[-1])[::3])  # a third of the elements carry a "track"
        names.append(name)
    num_elements = cols_total * (height // CELL)
    incidence, mo = mesh_overlap(maps, num_elements)
    ct = directional_ratios(incidence_from_sets(tracks, num_elements)).tocsr()
    options = TripletOptions()
    anchors = select_positives(combined_ratios(ct, mo, options.t_sfm), options)
    geo = out / "geolabel"
    gl3d.write_image_list(out / "image_list.txt", names)
    gl3d.write_ratios(geo / "common_track.txt", ct)
    gl3d.write_ratios(geo / "mesh_overlap.txt", mo)
    gl3d.write_mask_bin(geo / "mask.bin", pair_masks(maps, incidence, overlapping_pairs(mo), MaskOptions((32, 32))))
    for (i, j), (mi, mj) in pair_masks(maps, incidence, positive_pairs(anchors), MaskOptions(PNG_SIZE)).items():
        write_mask_png(out / "masks" / mask_png_name(i, j), mi)
        write_mask_png(out / "masks" / mask_png_name(j, i), mj)
    manifest = build_manifest(
        names,
        anchors,
        options,
        lambda i, j: f"masks/{mask_png_name(i, j)}",
        image_dir=str(images.resolve()),
        mask_bin="geolabel/mask.bin",
        mask_bin_size=32,
        png_dir="masks",
        png_size=PNG_SIZE,
    )
    write_manifest(out / "triplets.json", manifest)
    return out


def make_scenes(root: Path, names: list[str]) -> list[Path]:
    return [make_scene(root / n, seed) for seed, n in enumerate(names)]


def fit_one_batch(cfg, batch: dict, steps: int = 8) -> tuple[list[float], dict, dict]:
    """`steps` SGD steps (lr 0.01, momentum 0.9) of the training loop's model set-up and loss on one fixed batch,
    one torch thread: (the losses, the first step's loss terms, the last step's)."""
    import torch

    from mirror_sfm.train.loop import batch_loss, build_model, freeze_early_blocks, set_train_mode

    model = build_model(cfg.model)
    freeze_early_blocks(model, 12)
    set_train_mode(model, True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, first = [], None
        for _ in range(steps):
            loss, terms = batch_loss(model, batch, cfg, torch.device("cpu"))
            first = first or {k: v.item() for k, v in terms.items()}
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    return losses, first, terms
