"""Benchmarks of the training code: the bootstrapping step (`bootstrap`), robot-log ingestion
(`logs`) and the adapter's cost to the tracker (`adapter`); over `bootstap_ros.bench`'s helpers."""
