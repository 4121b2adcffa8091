"""Training: building a run's parts, the PPP trainer and its loop, checkpoints, data, metrics, SFT."""
