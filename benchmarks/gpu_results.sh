#!/usr/bin/env bash
# The accuracy and MTT measurements that want a GPU, in one command (gpu_checks.sh holds the speed and profile
# checks). Steps (PARTS, in this order; default all three, about 9 minutes on an H200):
#   mtt_speed     bench_mtt.py: MTT's own code vs ours (eager and compiled), seconds per iteration and peak CUDA
#                 memory, CIFAR-format digits, ConvNet, ipc 10, syn_steps 20 and 80 (MTT=<its checkout>);
#   fidelity      fidelity_paper.py on the CIFAR-format digits (32x32x3): the paper's code and ours, its six
#                 cells x 3 seeds, every set scored by validate.py (5 ConvNets x 300 epochs, DSA) with random real
#                 subsets (IOR) (PAPER=<DDInterpreter checkout>);
#   fidelity_mtt  fidelity_mtt.py on the CIFAR-format digits: MTT's code and ours, ipc 1 and 10, with CLoM, 3 seeds.
# and, only when PARTS names it:
#   mtt_profile   profile_iteration.py on MTT ipc 10 at syn_steps 20 and 80 (compiled, the card to itself, about
#                 3 minutes): per student step, the card's busy time, kernel launches and Python stages.
# The two fidelity steps run together, many runs sharing the card (--jobs), our scripts --eager (short runs would
# spend longer compiling than running); only the speed step has the card to itself.
# Every step stops at DEADLINE seconds from the start. Runs live in $WORK (default gpu_work/, kept on a warm
# machine): the same command again continues where a stopped one left off. $OUT (default gpu_out/) gets
# summary.txt and results.tgz (every run's record, report and log; refreshed every 20 s, so a command stopped
# from outside still returns what was done).
#     PAPER=<checkout> MTT=<checkout> bash benchmarks/gpu_results.sh
#     QUICK=1 bash benchmarks/gpu_results.sh      # tiny settings, to try the script on a CPU
# FIDELITY_ARGS / FIDELITY_MTT_ARGS: more flags for either fidelity script (the last of a flag wins), e.g. only the
# runs a CPU could not finish: PARTS=fidelity FIDELITY_ARGS="--cells DM10+cos --tools paper --seeds 2
# --no_random_real", then `fidelity_paper.py --summarize <both folders>` gives one table.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
WORK=${WORK:-gpu_work}
PAPER=${PAPER:-.paper_code}
MTT=${MTT:-.mtt_code}
PARTS=${PARTS:-mtt_speed fidelity fidelity_mtt}
DEADLINE=${DEADLINE:-540}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TQDM_DISABLE=1
PY=${PYTHON:-python3}
SUMMARY=$OUT/summary.txt
START=$SECONDS
if [ -n "${QUICK:-}" ]; then
    MTT_SPEED=(--model ConvNetW32 --ipc 1 --syn_steps 2 --iterations 1 --tools mtt ours)
    FIDELITY=(--cells DC1,DM10+cos --seeds 0 --budgets "CIFARDigits:DC=2,DSA=1,DM=2" --pool_size 1
              --pool_epochs 1 --num_eval 1 --eval_epochs 2 --jobs 2)
    FIDELITY_MTT=(--ipcs 1 --cells mtt ours+cos --seeds 0 --experts 2 --expert_train_epochs 2 --iterations 2
                  --syn_steps 2 --expert_epochs 1 --max_start_epoch 1 --eval_epochs 2 --num_eval 1 --jobs 1)
else
    MTT_SPEED=(--syn_steps 20 80 --iterations 3 --memory_cap_gb 60)
    FIDELITY=(--budgets "CIFARDigits:DC=100,DSA=10,DM=200" --pool_size 2 --pool_epochs 30 --jobs 10)
    FIDELITY_MTT=(--jobs 5)
fi

left() { echo $((DEADLINE - (SECONDS - START))); }
wants() { [[ " $PARTS " == *" $1 "* ]]; }
note() { echo "$*" >>"$SUMMARY"; }
snapshot() {  # records, reports and logs (no sets, data or buffers) into $OUT/results.tgz, replaced whole
    tar czf "$OUT/results.part" -C "$WORK" --exclude='*.pt' --exclude='*.pth' --exclude=cifar_digits \
        --exclude='buffers_*' --exclude=pretrained_model . 2>/dev/null && mv "$OUT/results.part" "$OUT/results.tgz"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  $PY -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available())"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null)"; } >>"$SUMMARY"
(while sleep 20; do snapshot; done) &
SNAPSHOTS=$!

if wants mtt_speed; then
    if [ -d "$MTT" ]; then
        limit=$(( $(left) < 240 ? $(left) : 240 ))
        timeout "$limit" $PY benchmarks/bench_mtt.py --mtt-code "$MTT" "${MTT_SPEED[@]}" --out "$WORK/mtt_speed" \
            >"$WORK/mtt_speed.log" 2>&1
        note "== mtt_speed: rc $?, at $((SECONDS - START)) s"
        grep -E '^\||^CIFAR|^device' "$WORK/mtt_speed.log" >>"$SUMMARY"
    else
        note "== no checkout of MTT's code at $MTT: mtt_speed skipped"
    fi
fi

if wants mtt_profile; then
    for steps in 20 80; do
        limit=$(( $(left) < 150 ? $(left) : 150 ))
        timeout "$limit" $PY benchmarks/profile_iteration.py --case MTT10 --syn_steps "$steps" --iterations 5 \
            --warmup 2 --work "$WORK/mtt_profile" >"$WORK/mtt_profile_$steps.log" 2>&1
        note "== mtt_profile syn_steps $steps: rc $?, at $((SECONDS - START)) s"
        grep -E '^MTT|^\||^device busy|^per iteration' "$WORK/mtt_profile_$steps.log" >>"$SUMMARY"
    done
fi

PIDS=()
start_fidelity() {  # PART CHECKOUT WHOSE SCRIPT FLAG NAME ARGS...: one fidelity script in the background
    local part=$1 checkout=$2 whose=$3 script=$4 flag=$5 name=$6
    shift 6
    if ! wants "$part"; then return; fi
    if [ ! -d "$checkout" ]; then note "== no checkout of $whose code at $checkout: $part skipped"; return; fi
    timeout "$(left)" $PY "benchmarks/$script" "$flag" "$checkout" --out "$WORK/$name" --datasets CIFARDigits \
        --eager "$@" >>"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}
start_fidelity fidelity "$PAPER" "the paper's" fidelity_paper.py --paper-code fidelity32 "${FIDELITY[@]}" \
    ${FIDELITY_ARGS:-}
start_fidelity fidelity_mtt "$MTT" "MTT's" fidelity_mtt.py --mtt-code fidelity_mtt32 "${FIDELITY_MTT[@]}" \
    ${FIDELITY_MTT_ARGS:-}
for pid in "${PIDS[@]}"; do wait "$pid"; note "== fidelity process $pid: rc $?, at $((SECONDS - START)) s"; done

if [ -d "$WORK/fidelity32" ]; then
    $PY benchmarks/fidelity_paper.py --summarize "$WORK/fidelity32" >>"$SUMMARY" 2>&1
fi
if [ -d "$WORK/fidelity_mtt32" ]; then
    $PY benchmarks/fidelity_mtt.py --summarize "$WORK/fidelity_mtt32" >>"$SUMMARY" 2>&1
fi
kill "$SNAPSHOTS" 2>/dev/null
snapshot
note "== total $((SECONDS - START)) s"
cat "$SUMMARY"
