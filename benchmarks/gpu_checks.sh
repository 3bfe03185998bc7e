#!/usr/bin/env bash
# The CUDA tests and the GPU measurements in one command, each step under a time limit. Steps (PARTS, in this
# order; default all four, about 10 minutes on an H200, 13 with BEFORE):
#   tests    the CUDA tests (tests/test_cuda.py): the fast paths against references, no synchronisation in
#            steady-state steps, the CUDA graph on persistent tensors, draws read without waiting;
#   profile  profile_iteration.py on DC ipc 10 and DM ipc 50: the card's busy %, launches, copies and
#            synchronisations per iteration; with BEFORE=<checkout of an older commit> the same profile of
#            that code too (before/after in one run);
#   paper    bench_paper.py: the paper's own code vs ours, seconds per iteration (needs a checkout of the
#            paper's code: PAPER=<its root>, default .paper_code/ in this checkout): DC10, DSA10, DM50, DM10+cos;
#   sweep    bench_sweep.py: a 6-run DM sweep one after another vs 2, 3 and 6 runs at a time on the card.
#   mtt      (only when named in PARTS) bench_mtt.py: MTT's own code vs ours, seconds per iteration and peak
#            memory (CUDA and host) at syn_steps 20 and 80 (needs a checkout of MTT's code: MTT=<its root>,
#            default .mtt_code/ in this checkout).
# With FULL=1, then: bench_paper's whole commands (the evaluation 20 x 1000, README command 1 scaled down),
#   bench_distill.py per iteration (tf32, bf16), bench_eval.py, profile_matching.py, check_fast_cuda.py.
# Not here: the accuracy runs (dsa_fidelity.py, fidelity_paper.py, digits_table.py): each is run on its own.
# $OUT (default ./gpu_out) gets summary.txt (printed last) and logs.tgz; the torch version and the card head it.
#     bash benchmarks/gpu_checks.sh
#     BEFORE=../before PARTS="profile" bash benchmarks/gpu_checks.sh
#     QUICK=1 bash benchmarks/gpu_checks.sh      # tiny settings, to try the script on a CPU
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
LOGS=$OUT/logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
PY=${PYTHON:-python3}
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
START=$SECONDS
PAPER=${PAPER:-.paper_code}
MTT=${MTT:-.mtt_code}
BEFORE=${BEFORE:-}
PARTS=${PARTS:-tests profile paper sweep}
if [ -n "${QUICK:-}" ]; then
    DEV=cpu SIZE=(--batch_real 4 --repeats 1) EVAL=(--nets 2 --epochs 2) CASES=DM10 TESTS=tests/test_host_sync.py
    PAPER_DC=(--cases DC1 --iterations 2 --warmup 1) PAPER_DM=(--cases DM10 --iterations 3 --warmup 2)
    PROFILE=("DC1 --length 20 --iterations 1 --warmup 1" "DM10 --length 20 --iterations 2 --warmup 1")
    SWEEP=(--iterations 2 --batch_real 4 --jobs 2)
    WHOLE=(--cases eval2x20 --epochs 1)
    MTT_BENCH=(--model ConvNetW32 --syn_steps 2 --iterations 1 --tools mtt ours)
else
    DEV=cuda SIZE=(--repeats 3) EVAL=(--nets 5 --epochs 300) CASES=DC10,DM10,DM50 TESTS=tests/test_cuda.py
    PAPER_DC=(--cases DC10,DSA10 --iterations 5 --warmup 2)
    PAPER_DM=(--cases DM50,DM10+cos --iterations 40 --warmup 15)
    PROFILE=("DC10 --iterations 5 --warmup 3" "DM50 --iterations 20 --warmup 10")
    SWEEP=(--gpu 0 --cifar --batch_real 256 --iterations 300 --jobs 2,3,6)
    # the evaluation of 20 networks x 1000 epochs (one of the paper's 20 commands, x 20); README command 1 at
    # 2 models x 3 epochs (scale by 10/2 models x 150/3 epochs for the whole command: the epochs are alike)
    WHOLE=(--cases eval20x1000,pool2x1 --epochs 3)
    MTT_BENCH=(--syn_steps 20 80 --iterations 3 --memory_cap_gb 60)
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    echo "== $name: rc $?, $((SECONDS - start)) s (at $((SECONDS - START)) s)" >>"$SUMMARY"
}
wants() { [[ " $PARTS " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null >>"$SUMMARY"
$PY -c "import torch; print('torch', torch.__version__, '| commit', end=' ')" >>"$SUMMARY"
git rev-parse --short HEAD >>"$SUMMARY" 2>/dev/null || echo >>"$SUMMARY"

if wants tests; then
    step tests 240 $PY -m pytest -q -p no:cacheprovider "$TESTS" -rs
    tail -n 4 "$LOGS/tests.log" >>"$SUMMARY"
fi

if wants profile; then
    for case in "${PROFILE[@]}"; do
        name=${case%% *}
        step "profile_$name" 120 $PY benchmarks/profile_iteration.py --case $case
        grep -E "^(DC|DM|DSA)[0-9]|^device busy|^per iteration" "$LOGS/profile_$name.log" | sed 's/^/after:  /' >>"$SUMMARY"
        if [ -n "$BEFORE" ]; then  # today's profiler on the older code
            cp benchmarks/profile_iteration.py "$BEFORE/benchmarks/profile_iteration_now.py"
            step "profile_${name}_before" 120 env PYTHONPATH="$BEFORE" bash -c \
                "cd '$BEFORE' && $PY benchmarks/profile_iteration_now.py --case $case"
            grep -E "^(DC|DM|DSA)[0-9]|^device busy|^per iteration" "$LOGS/profile_${name}_before.log" \
                | sed 's/^/before: /' >>"$SUMMARY"
        fi
    done
fi

if wants paper; then
    if [ -d "$PAPER" ]; then
        step paper_dc 200 $PY benchmarks/bench_paper.py --paper-code "$PAPER" "${PAPER_DC[@]}" --work "$OUT/paper_dc"
        grep -E '^device|^case|^[A-Z]' "$LOGS/paper_dc.log" >>"$SUMMARY"
        step paper_dm 150 $PY benchmarks/bench_paper.py --paper-code "$PAPER" "${PAPER_DM[@]}" --work "$OUT/paper_dm"
        grep -E '^case|^[A-Z]' "$LOGS/paper_dm.log" >>"$SUMMARY"
        rm -rf "$OUT/paper_dc" "$OUT/paper_dm"
    else
        echo "== no checkout of the paper's code at $PAPER: bench_paper.py skipped" >>"$SUMMARY"
    fi
fi

if wants sweep; then
    step sweep 200 $PY benchmarks/bench_sweep.py "${SWEEP[@]}" --out "$OUT/sweep"
    grep -E '^[0-9]+ DM runs|^\|' "$LOGS/sweep.log" >>"$SUMMARY"
    rm -rf "$OUT/sweep"
fi

if wants mtt; then
    if [ -d "$MTT" ]; then
        step mtt 500 $PY benchmarks/bench_mtt.py --mtt-code "$MTT" "${MTT_BENCH[@]}" --out "$OUT/mtt"
        grep -E '^\||^CIFAR' "$LOGS/mtt.log" >>"$SUMMARY"
        rm -rf "$OUT/mtt"
    else
        echo "== no checkout of MTT's code at $MTT: bench_mtt.py skipped" >>"$SUMMARY"
    fi
fi

if [ -z "${FULL:-}" ]; then
    tar czf "$OUT/logs.tgz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"
    echo "== total $((SECONDS - START)) s" >>"$SUMMARY"
    cat "$SUMMARY"
    exit 0
fi

if [ -d "$PAPER" ]; then
    step paper_whole 1500 $PY benchmarks/bench_paper.py --paper-code "$PAPER" "${WHOLE[@]}" --work "$OUT/paper_whole"
    grep -E '^case|^[a-z]+[0-9]+x' "$LOGS/paper_whole.log" >>"$SUMMARY"
    rm -rf "$OUT/paper_whole"
fi

step bench_tf32 130 $PY benchmarks/bench_distill.py --device $DEV --scope iteration "${SIZE[@]}" --cases $CASES
grep '^|\|^<!--' "$LOGS/bench_tf32.log" >>"$SUMMARY"
step bench_bf16 90 $PY benchmarks/bench_distill.py --device $DEV --scope iteration "${SIZE[@]}" \
    --cases "${CASES/DM10,/}" --precision bf16
grep '^| [DS]\|^<!--' "$LOGS/bench_bf16.log" >>"$SUMMARY"

for precision in tf32 bf16; do
    step eval_$precision 60 $PY benchmarks/bench_eval.py --device $DEV "${EVAL[@]}" --precision $precision
    grep -E '^\||^device' "$LOGS/eval_$precision.log" >>"$SUMMARY"
done

if [ -z "${QUICK:-}" ]; then
    step profile_matching 50 $PY benchmarks/profile_matching.py --ipc 10 --batch_real 256 --repeats 5
    grep '^|' "$LOGS/profile_matching.log" >>"$SUMMARY"
    step check_fast 120 $PY benchmarks/check_fast_cuda.py
    cat "$LOGS/check_fast.log" >>"$SUMMARY"
fi

tar czf "$OUT/logs.tgz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"
echo "== total $((SECONDS - START)) s" >>"$SUMMARY"
cat "$SUMMARY"
exit 0
