"""COLMAP mapping (incremental or global) of a matched database into OUT/sparse, and the models' statistics."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pycolmap
from tqdm import tqdm

from .options import ReconstructionOptions


def run_mapping(
    database: Path, image_dir: Path, out_dir: Path, options: ReconstructionOptions, num_images: int | None = None
) -> dict[int, Any]:
    """Map into `out_dir/sparse/<k>`; the previous `sparse` folder is replaced only on success.

    Incremental mapping shows a bar of registered images (out of `num_images`, when given).
    """
    out_dir = Path(out_dir)
    tmp = out_dir / f".sparse.{os.getpid()}.tmp"  # not mkdtemp: keep the umask's permissions
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if options.mapper == "global":
            opts = pycolmap.GlobalPipelineOptions()
            opts.num_threads = options.num_threads
            opts.random_seed = options.mapper_seed
            models = pycolmap.global_mapping(str(database), str(image_dir), str(tmp), options=opts)
        else:
            opts = pycolmap.IncrementalPipelineOptions()
            opts.num_threads = options.num_threads
            opts.random_seed = options.mapper_seed
            with tqdm(total=num_images, desc="mapping", unit="img", leave=False) as bar:
                models = pycolmap.incremental_mapping(
                    str(database), str(image_dir), str(tmp), options=opts, next_image_callback=lambda: bar.update(1)
                )
        final = out_dir / "sparse"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dict(models)


def largest_model(models: dict[int, Any]) -> int | None:
    """Index of the model with the most registered images (then most points), None if there is none."""
    if not models:
        return None
    return max(models, key=lambda k: (models[k].num_reg_images(), models[k].num_points3D()))


def registered_any_model(models: Iterable[Any]) -> int:
    """Images registered in at least one model. COLMAP lets models share up to 20 images, so the sum of the
    model sizes over-counts; on a scene that falls apart this is steadier than the largest model alone."""
    return len({rec.images[i].name for rec in models for i in rec.reg_image_ids()})


def model_stats(models: dict[int, Any]) -> dict:
    """Registered images (largest model, and any model), points and quality of the largest model."""
    best = largest_model(models)
    if best is None:
        return {
            "model": None,
            "registered": 0,
            "registered_any_model": 0,
            "num_models": 0,
            "sparse_points": 0,
            "observations": 0,
            "mean_track_length": None,
            "mean_reprojection_error": None,
        }
    rec = models[best]
    return {
        "model": f"sparse/{best}",
        "registered": int(rec.num_reg_images()),
        "registered_any_model": registered_any_model(models.values()),
        "num_models": len(models),
        "sparse_points": int(rec.num_points3D()),
        "observations": int(rec.compute_num_observations()),
        "mean_track_length": float(rec.compute_mean_track_length()),
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
    }
