"""Training our own tracker: synthetic data, bootstrapping, losses and the training loop.

Installed as `bootstap_ros_training` (setup.py maps this folder to that name, so no generic
top-level `training` lands in site-packages); from a checkout `python -m training.<module>`
runs too. Modules here import each other relatively (`from .data import ...`) so both names work.
"""
