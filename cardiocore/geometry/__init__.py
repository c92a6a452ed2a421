"""Mesh and volume geometry (compute layer: torch/numpy/scipy only)."""
