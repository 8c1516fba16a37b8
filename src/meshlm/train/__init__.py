"""Training: optimizer and schedule, checkpoints, distributed setup and the training loop."""
