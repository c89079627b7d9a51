"""Training: loop, losses, optimisers/schedules, checkpoints."""
