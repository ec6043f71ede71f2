#!/usr/bin/env bash
# One GPU stage of the default model's camera training (docs/default-model.md):
# the embedded model fine-tuned on synthetic clips seen through a random camera and
# sensor (70 %; the rest clean), 40 % of them on weak, fine background textures, for
# MINUTES of wall time, on a machine with a CUDA GPU and many cores for the clips.
#
#   OUT=outputs/gpu_train MINUTES=8 tools/train_gpu.sh
#
# Settings (environment): MINUTES, INIT (the starting checkpoint), SEED, LR, WARMUP,
# BATCH, FRAMES, DEVICE, WORKERS (default: one per core but one), PY.
#
# Runs from a checkout with nothing installed but torch, numpy, opencv and pyyaml:
# training/ is made importable as bootstap_ros_training through a link. Writes under
# OUT: final.pt (the weights), snapshot.pt (the full checkpoint halfway through, or the
# last one if the run was cut short), train_log.csv, config.json, train.txt (the
# run's output) and machine.txt. CPU smoke test: DEVICE=cpu MINUTES=0.3 BATCH=2 FRAMES=4.
set -u
OUT=${OUT:-outputs/gpu_train}
MINUTES=${MINUTES:-8}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-16}
FRAMES=${FRAMES:-24}
INIT=${INIT:-bootstap_ros/data/default.pt}
SEED=${SEED:-21}
LR=${LR:-3e-4}
WARMUP=${WARMUP:-50}
WORKERS=${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))}
PY=${PY:-python3}

mkdir -p "$OUT"
run=$(mktemp -d)/run
site=$(mktemp -d)
ln -s "$PWD/training" "$site/bootstap_ros_training"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
    date -u; nproc; free -g | head -2
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c 'import torch, numpy, cv2; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
"numpy", numpy.__version__, "cv2", cv2.__version__)'
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# Halfway through, keep the full checkpoint (a fallback and a point for weight averaging).
( sleep "$("$PY" -c "print(int($MINUTES * 30))")"; cp "$run/checkpoint.pt" "$OUT/snapshot.pt" 2>/dev/null ) &
snapper=$!

"$PY" -m bootstap_ros_training.supervised --output "$run" --init "$INIT" \
    --camera --camera-share 0.7 --faint-background 0.4 \
    --batch-size "$BATCH" --frames "$FRAMES" --num-points 256 --lr "$LR" --warmup "$WARMUP" \
    --time-budget "$MINUTES" --device "$DEVICE" --amp bf16 --num-workers "$WORKERS" \
    --checkpoint-every 100 --eval-every 0 --log-every 20 --seed "$SEED" 2>&1 | tee "$OUT/train.txt"
status=${PIPESTATUS[0]}
kill "$snapper" 2>/dev/null

cp "$run/train_log.csv" "$run/config.json" "$OUT/" 2>/dev/null
if [ -f "$run/final.pt" ]; then
    cp "$run/final.pt" "$OUT/"
else
    cp "$run/checkpoint.pt" "$OUT/snapshot.pt" 2>/dev/null
fi
ls -la "$OUT"
exit "$status"
