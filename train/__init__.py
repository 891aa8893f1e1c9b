"""The trainer: models, perturbations, attacks, losses, variants, loop, evaluation, reports."""
