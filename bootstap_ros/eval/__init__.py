"""Evaluation on the TAP-Vid benchmarks (DAVIS, RGB-Stacking) and RoboTAP.

The package owns the dataset readers and query sampling (``datasets``), the
TAP-Vid metrics (``metrics``), the glue that runs a predictor over a video in
either query mode (``predictors``), a Lucas-Kanade baseline (``lk``), the
optional report (``report``) and the ``bootstap-eval`` command (``cli``).

``datasets`` and ``metrics`` are numpy-only; nothing here imports torch at
import time.
"""
