#!/usr/bin/env bash
# A small sweep on the bundled Digits set (offline, CPU or GPUs): DM at ipc 1 and 10, without CLoM and with
# CLoM (ce and cos distances, a pool of 2 ConvNets trained first), 2 seeds each -- 12 runs, JOBS at a time per
# device -- then one table of every result (summarize.py). About 6 minutes on 2 idle CPU cores (16 on 2 busy
# ones).
#
#   bash scripts/sweep_digits.sh [--jobs N] [--gpu "0 1"] [OUT]   (OUT: sweep_digits/<date-time>; must not exist)
#
# --jobs N: runs side by side on each device (default 2). A small run leaves a GPU idle most of the time, so
# several share one card well (benchmarks/bench_sweep.py measures it). --gpu: cpu (default) or CUDA card numbers;
# with several cards every card runs N at a time. Each run's set is the one it gives alone.
# Knobs (environment variables): JOBS and GPU (as the two flags), SEEDS ("0 1"), ITERATIONS (DM iterations,
# 100), BATCH_REAL (real images per class per step, 32), NUM_EVAL (evaluation networks per set, 3), EVAL_EPOCHS
# (their epochs, 100), ALPHA (CLoM weight, 10), POOL_EPOCHS (epochs of the pool's ConvNets, 10).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOBS="${JOBS:-2}"
GPU="${GPU:-cpu}"
while (( $# )); do
    case "$1" in
        --jobs) JOBS="$2"; shift 2 ;;
        --gpu) GPU="$2"; shift 2 ;;
        -*) echo "error: unknown flag $1 (--jobs N, --gpu DEVICES, then OUT)" >&2; exit 2 ;;
        *) break ;;
    esac
done
OUT="${1:-sweep_digits/$(date +%Y%m%d-%H%M%S)}"
if ! [[ "$JOBS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --jobs must be a whole number >= 1, got '$JOBS'" >&2
    exit 2
fi
read -r -a DEVICES <<< "$GPU"
SEEDS="${SEEDS:-0 1}"
ITERATIONS="${ITERATIONS:-100}"
BATCH_REAL="${BATCH_REAL:-32}"
NUM_EVAL="${NUM_EVAL:-3}"
EVAL_EPOCHS="${EVAL_EPOCHS:-100}"
ALPHA="${ALPHA:-10}"
POOL_EPOCHS="${POOL_EPOCHS:-10}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny networks: one thread per run, JOBS runs side by side

if [[ -e "$OUT" ]]; then
    echo "error: $OUT exists; pass another output folder" >&2
    exit 2
fi
mkdir -p "$OUT/logs"
cd "$OUT"
start=$SECONDS

echo "== pool: 2 ConvNets x $POOL_EPOCHS epochs on Digits (for CLoM)"
python "$ROOT/train_original_models.py" --dataset Digits --model ConvNet --normalize_data --num 2 \
    --epochs "$POOL_EPOCHS" --save_every "$POOL_EPOCHS" --lr_decay_step "" --random_seed 0 --gpu "${DEVICES[0]}" \
    > logs/pool.txt 2>&1 \
    || { echo "error: pool training failed; see $OUT/logs/pool.txt" >&2; exit 1; }

CLOM=(--CLoM --models_pool ConvNet --model_num 2 --epoch "$POOL_EPOCHS" --source_dataset Digits --alphas "$ALPHA"
      --CLoM_batch_size 0)
pids=()
slots=()  # slot s runs on device DEVICES[s % number of devices]; JOBS slots per device
for (( s = 0; s < JOBS * ${#DEVICES[@]}; s++ )); do slots+=(0); done
launch() {  # launch NAME ARGS...: one distillation in the background, in a free slot of a device
    local name=$1 slot=-1 s
    shift
    while (( slot < 0 )); do
        for s in "${!slots[@]}"; do
            if (( slots[s] == 0 )) || ! kill -0 "${slots[s]}" 2> /dev/null; then slot=$s; break; fi
        done
        (( slot >= 0 )) || wait -n || true  # all busy: wait for one (failures are counted below)
    done
    local device=${DEVICES[slot % ${#DEVICES[@]}]}
    (
        if python "$ROOT/methods/DC_DSA_DM/main_DM.py" "$@" --gpu "$device" > "logs/$name.txt" 2>&1; then
            echo "   done $name on $device ($((SECONDS - start)) s)"
        else
            echo "   FAILED $name: see $OUT/logs/$name.txt" >&2
            exit 1
        fi
    ) &
    slots[slot]=$!
    pids+=($!)
}

echo "== 12 DM runs, $JOBS at a time on each of: ${DEVICES[*]}: ipc 1 and 10 x {no CLoM, CLoM ce, CLoM cos} x seeds $SEEDS"
for ipc in 1 10; do
    for seed in $SEEDS; do
        run=(--dataset Digits --ipc "$ipc" --Iteration "$ITERATIONS" --batch_real "$BATCH_REAL" --num_eval "$NUM_EVAL"
             --epoch_eval_train "$EVAL_EPOCHS" --random_seed "$seed"
             --save_path "runs/IPC$ipc/seed$seed")
        launch "DM_ipc${ipc}_seed${seed}" "${run[@]}"
        launch "DM_ipc${ipc}_seed${seed}_ce" "${run[@]}" "${CLOM[@]}" --CLoM_distance ce
        launch "DM_ipc${ipc}_seed${seed}_cos" "${run[@]}" "${CLOM[@]}" --CLoM_distance cos
    done
done
failed=0
for pid in "${pids[@]}"; do
    wait "$pid" || failed=$((failed + 1))
done

echo
echo "== results ($((SECONDS - start)) s in all; outputs in $OUT)"
python "$ROOT/summarize.py" runs
if (( failed )); then
    echo "error: $failed run(s) failed (logs in $OUT/logs)" >&2
    exit 1
fi
