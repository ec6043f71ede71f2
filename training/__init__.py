"""Training our own tracker: synthetic data, bootstrapping, losses and the training loop."""
