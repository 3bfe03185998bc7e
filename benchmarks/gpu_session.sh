#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a short loan of a CUDA machine (about 8 minutes on an H200):
#   1. the CUDA tests (tests/test_cuda.py, the CUDA data test);
#   2. benchmarks/bench_distill.py per outer step and per whole iteration, bench_train_pool.py, bench_clom.py;
#   3. a DC ipc-10 sweep on Digits (lr_img x init x iterations), each set validated like benchmarks/digits_table.py.
# $OUT (default ./gpu_out) gets summary.txt and logs.tgz (every log); the summary is printed last.
#     bash benchmarks/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
LOGS=$OUT/logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
PY=${PYTHON:-python3}
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, keep the tail
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    echo "== $name: rc $?, $((SECONDS - start)) s" | tee -a "$SUMMARY"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    | tee -a "$SUMMARY"

step tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_data.py -k "cuda" -rs
tail -n 3 "$LOGS/tests.log" >>"$SUMMARY"
step bench_step 150 $PY benchmarks/bench_distill.py --device cuda
grep '^|' "$LOGS/bench_step.log" >>"$SUMMARY"
step bench_iteration 150 $PY benchmarks/bench_distill.py --device cuda --scope iteration --repeats 3 \
    --cases DC1,DC10,DSA10,DM10,DC50
grep '^|' "$LOGS/bench_iteration.log" >>"$SUMMARY"
step bench_pool 90 $PY benchmarks/bench_train_pool.py --device cuda --num 10 --images 4096 --epochs 2
tail -n 3 "$LOGS/bench_pool.log" >>"$SUMMARY"
step bench_clom 60 $PY benchmarks/bench_clom.py --device cuda --quick
tail -n 8 "$LOGS/bench_clom.log" >>"$SUMMARY"

# DC ipc 10 on Digits: which settings beat 10 random real images per class (same evaluation)? On an H200
# (8 jobs sharing it, 30 iterations in 105 s): random real 97.16 ± 0.21%, lr_img 0.1: 94.09 ± 0.72%, 0.01: 97.53 ± 0.59%.
sweep() {  # sweep NAME DISTILL_FLAGS...
    local name=$1
    shift
    local dir=$LOGS/sweep/$name
    mkdir -p "$dir"
    local start=$SECONDS
    $PY methods/DC_DSA_DM/main.py --method DC --dataset Digits --ipc 10 --num_eval 0 --random_seed 0 \
        --save_path "$dir" "$@" >"$LOGS/sweep_$name.log" 2>&1 || return
    local seconds=$((SECONDS - start))
    $PY validate.py --dataset Digits --model ConvNet --normalize_data --dsa --epochs 300 --save_every 300 \
        --lr_decay_step 150 --num_eval 5 --random_seed 0 --synthesis_data_path "$(find "$dir" -name 'res_*.pt')" \
        >"$LOGS/validate_$name.log" 2>&1
    echo "$name: distilled in $seconds s, $(grep -o 'final [0-9.]* ± [0-9.]*%' "$LOGS/validate_$name.log")" \
        >>"$LOGS/sweep_results.txt"
}
sweep_start=$SECONDS
sweep random_real --init real --Iteration 0 &
sweep lr0.1_real_30 --init real --Iteration 30 &
sweep lr0.01_real_30 --init real --Iteration 30 --lr_img 0.01 &
sweep lr0.03_real_30 --init real --Iteration 30 --lr_img 0.03 &
sweep lr0.01_real_100 --init real --Iteration 100 --lr_img 0.01 &
sweep lr0.01_noise_100 --init noise --Iteration 100 --lr_img 0.01 &
deadline=$((SECONDS + ${SWEEP_SECONDS:-220}))
while [ -n "$(jobs -rp)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 2; done
echo "== sweep: $((SECONDS - sweep_start)) s, unfinished: $(jobs -rp | wc -l)" | tee -a "$SUMMARY"
sort "$LOGS/sweep_results.txt" >>"$SUMMARY" 2>/dev/null
rm -rf "$LOGS/sweep"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
cat "$SUMMARY"
pkill -P $$ 2>/dev/null
exit 0
