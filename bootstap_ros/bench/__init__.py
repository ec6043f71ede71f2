"""Every benchmark of the tracker and the node, and the helpers that run nodes as child processes.

- `step`: `bootstap-bench`, the network step per backend, precision and point count;
- `latency`: the node end to end against a camera (output rate, latency, CPU);
- `depth`: the tracks_3d stage; `swap`: a runtime model swap;
- `processes`: a local ROS environment and one stop for node process groups.

The benchmarks of the training code (the bootstrapping step, robot-log ingestion, the adapter's
cost) sit in the training package's `bench/` beside what they measure, over these helpers.
Each benchmark prints its figures and writes them to a file; none is a timed test.
"""
