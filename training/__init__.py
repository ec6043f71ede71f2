"""Training our own tracker: synthetic data, bootstrapping, losses and the training loop.

The package `bootstap_ros_training` (the repository's training/ folder; setup.py maps it and
each subfolder, and `make setup` installs it editable, so the name is the same in a checkout).
`loop` is the one training loop; `supervised` and `bootstrap` are the two recipes over it;
`domains/` generates the test domains, `adapter/` is the on-robot adapter's runtime and node,
`bench/` the training code's benchmarks.
"""
