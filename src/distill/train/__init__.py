"""Training: :func:`~distill.train.fit.fit` and its parts (the config, the run folder, the
divergence guard, augmentation for consistent teaching)."""
