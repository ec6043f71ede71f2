"""`python -m bootstap_ros.bench` is `bootstap-bench`."""

import sys

from bootstap_ros.bench.step import main

sys.exit(main())
