"""Training: checkpoints, the pretraining engine, distributed helpers."""
