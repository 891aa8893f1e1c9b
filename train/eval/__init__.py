"""Robustness evaluation: the attacks, `evaluate` (a run, or a model in memory), the
gradient-masking sanity checks, per-image results and the images an evaluation attacks."""
