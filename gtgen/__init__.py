"""gtgen: GL3D-style overlap ground truth (common-track, mesh-overlap and combined ratios) from reconstructions."""
