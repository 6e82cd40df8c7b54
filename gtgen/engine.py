"""What a visibility engine is: the sampling grid every engine shares and the interface each one offers.

`gtgen.visibility` (ray casting, the default) and `gtgen.render` (OpenGL rasterising) both import this
module and not each other's internals, so the two engines form no import cycle.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


def grid_shape(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(rows, cols) of the sampling grid: long side `resolution`, aspect kept, at least 1."""
    scale = resolution / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


class RayEngine(Protocol):
    """A ray caster (`visibility.MeshRayCaster`): the first triangle each world-space ray hits."""

    engine: str  # "embree" | "numpy"
    num_faces: int

    def first_hits(self, origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Index of the first triangle each ray hits (-1: none)."""
        ...


class RasterEngine(Protocol):
    """A rasteriser (`render.MeshRasterizer`): a whole triangle map on the `grid_shape` grid at once."""

    engine: str  # "pyrender"
    num_faces: int

    def triangle_map(self, camera, cam_from_world, resolution: int = 256) -> np.ndarray:
        """(rows, cols) int32 map of the triangle seen through each grid cell centre (-1: none)."""
        ...
