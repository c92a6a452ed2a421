"""One training loop for every method: devices, AMP, checkpoints, resume, DDP (compute layer)."""
