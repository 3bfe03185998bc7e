#!/usr/bin/env bash
# Every GPU check and benchmark in one call of a short CUDA loan (about 9 minutes on an H200):
#   1. issue-13 fidelity on the CIFAR-format Digits copy (DM and DSA ipc 10, 3 seeds, before and after the
#      one-op-per-class DSA; the "before" checkout is .before/, carried) — in the background, while
#   2. the CUDA tests (tests/test_cuda.py) run;
#   3. alone on the card: bench_distill.py per whole iteration (paper loop vs batched eager vs default fast) and
#      bench_eval.py (evaluation ensembles).
# $OUT (default ./gpu_out) gets summary.txt (printed last) and logs.tgz.
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
START=$SECONDS

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    echo "== $name: rc $?, $((SECONDS - start)) s (at $((SECONDS - START)) s)" | tee -a "$SUMMARY"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$SUMMARY"

# 1. fidelity jobs, one process per (variant, method, seed), all at once
FID=$OUT/fidelity
$PY benchmarks/dsa_fidelity.py --out "$FID/before" --cifar_digits "$FID/data" --prepare_only >"$LOGS/fid_prep.log" 2>&1
for variant in before after; do
    code=$PWD extra="--eager"  # accuracy, not speed: no compiling in 12 processes at once
    [ "$variant" = before ] && code=$PWD/.before extra=""
    for method in DM DSA; do
        for seed in 0 1 2; do
            timeout "${FID_SECONDS:-220}" $PY benchmarks/dsa_fidelity.py --code "$code" --out "$FID/$variant" \
                --cifar_digits "$FID/data" --datasets CIFARDigits --methods $method --seeds $seed \
                --dm_iterations "${DM_ITERS:-300}" --dsa_iterations "${DSA_ITERS:-10}" --eager_eval \
                --distill_extra="$extra" \
                >"$LOGS/fid_${variant}_${method}_$seed.log" 2>&1 &
        done
    done
done

# 2. CUDA tests, meanwhile
step tests 140 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs
tail -n 4 "$LOGS/tests.log" >>"$SUMMARY"
wait
echo "== fidelity done at $((SECONDS - START)) s" | tee -a "$SUMMARY"
$PY benchmarks/dsa_fidelity.py --summarize "$FID/before" "$FID/after" >>"$SUMMARY" 2>&1
cat "$FID"/*/*_seed*.json 2>/dev/null | grep -v validate >"$LOGS/fidelity_runs.txt"

# 3. benchmarks, alone on the card
step bench_iteration 150 $PY benchmarks/bench_distill.py --device cuda --scope iteration --repeats 3 \
    --cases DC10,DSA10,DM50
grep '^|' "$LOGS/bench_iteration.log" >>"$SUMMARY"
step bench_eval 80 $PY benchmarks/bench_eval.py --device cuda --nets 5 --epochs 300
grep -E '^\||^device' "$LOGS/bench_eval.log" >>"$SUMMARY"

rm -rf "$FID/data" "$FID"/*/CIFARDigits_*/
tar czf "$OUT/logs.tgz" -C "$OUT" logs fidelity 2>/dev/null && rm -rf "$LOGS" "$FID"
echo "== total $((SECONDS - START)) s" | tee -a "$SUMMARY"
cat "$SUMMARY"
exit 0
