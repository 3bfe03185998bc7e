#!/usr/bin/env bash
# The CUDA tests and the GPU benchmarks in one command, each step under a time limit (about 8 minutes on an H200):
#   1. the CUDA tests (tests/test_cuda.py);
#   2. bench_paper.py: the paper's own code vs ours, whole commands, seconds per iteration (needs a checkout of
#      the paper's code: PAPER=<its root>, default .paper_code/ in this checkout);
#   then, with FULL=1:
#   3. bench_distill.py per whole iteration: paper loop vs batched eager vs default fast path, at the device's
#      default precision (tf32) and under bf16;
#   4. bench_eval.py (evaluation ensembles), tf32 and bf16;
#   5. profile_matching.py: where a DC step's time goes (channels-last and bf16 variants of the real side).
# Not here: bench_paper.py's whole-command cases (pool2x1, eval2x20, eval20x1000) and the accuracy runs
# (dsa_fidelity.py, fidelity_paper.py, digits_table.py): each is run on its own.
# $OUT (default ./gpu_out) gets summary.txt (printed last) and logs.tgz.
#     bash benchmarks/gpu_checks.sh
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
if [ -n "${QUICK:-}" ]; then
    DEV=cpu SIZE=(--batch_real 4 --repeats 1) EVAL=(--nets 2 --epochs 2) CASES=DM10 TESTS=tests/test_fast.py
    PAPER_DC=(--cases DC1 --iterations 2 --warmup 1) PAPER_DM=(--cases DM10 --iterations 3 --warmup 2)
else
    DEV=cuda SIZE=(--repeats 3) EVAL=(--nets 5 --epochs 300) CASES=DC10,DM10,DM50 TESTS=tests/test_cuda.py
    PAPER_DC=(--cases DC10,DC10+cos,DSA10 --iterations 5 --warmup 2)
    PAPER_DM=(--cases DM50,DM10+cos,DM10 --iterations 40 --warmup 15)
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    echo "== $name: rc $?, $((SECONDS - start)) s (at $((SECONDS - START)) s)" >>"$SUMMARY"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null >>"$SUMMARY"
$PY -c "import torch; print('torch', torch.__version__)" >>"$SUMMARY"

step tests 160 $PY -m pytest -q -p no:cacheprovider "$TESTS" -rs
tail -n 4 "$LOGS/tests.log" >>"$SUMMARY"

if [ -d "$PAPER" ]; then
    step paper_dc 260 $PY benchmarks/bench_paper.py --paper-code "$PAPER" "${PAPER_DC[@]}" --work "$OUT/paper_dc"
    grep -E '^device|^case|^[A-Z]' "$LOGS/paper_dc.log" >>"$SUMMARY"
    step paper_dm 150 $PY benchmarks/bench_paper.py --paper-code "$PAPER" "${PAPER_DM[@]}" --work "$OUT/paper_dm"
    grep -E '^case|^[A-Z]' "$LOGS/paper_dm.log" >>"$SUMMARY"
    rm -rf "$OUT/paper_dc" "$OUT/paper_dm"
else
    echo "== no checkout of the paper's code at $PAPER: bench_paper.py skipped" >>"$SUMMARY"
fi
if [ -z "${FULL:-}" ]; then
    tar czf "$OUT/logs.tgz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"
    echo "== total $((SECONDS - START)) s" >>"$SUMMARY"
    cat "$SUMMARY"
    exit 0
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

[ -z "${QUICK:-}" ] && step profile 50 $PY benchmarks/profile_matching.py --ipc 10 --batch_real 256 --repeats 5 \
    && grep '^|' "$LOGS/profile.log" >>"$SUMMARY"

tar czf "$OUT/logs.tgz" -C "$OUT" logs 2>/dev/null && rm -rf "$LOGS"
echo "== total $((SECONDS - START)) s" >>"$SUMMARY"
cat "$SUMMARY"
exit 0
