"""Training: freezing, optimisation, checkpoints and the epoch loop, as plain functions over plain objects."""
