"""Training: loop, state, step, optimizer, checkpoints, metrics."""
