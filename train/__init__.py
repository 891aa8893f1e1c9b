"""The trainer: models, perturbations, schedules, losses, variants, the loop, checkpoints, and
(in `eval/`) robustness evaluation. Imports `satpipe.data` and `satpipe.core` only."""
