"""Evaluation metrics with stated conventions and units (compute layer)."""
