#!/usr/bin/env bash
# The figures and tests that need a GPU, in one run: the CUDA-marked tests, `cardio bench gen`
# (fast samplers vs the 1000-step DDPM, with 1-NNA), Predict-mode speed on a 128^3 image,
# `cardio bench core`, a tenth of the default CardioGen training (its time x 10 bounds the full
# training's), the fit ablation on one MM-WHS map, and the sampler 1-NNA again on 6,000 meshes
# (40 sets) to settle the gap the target allows. Figures that are CPU-bound even on the GPU
# machine (Predict's held-out Dice, the 512 x 512 x 300 memory case) are measured on a CPU.
#
#   Testing/gpu_checks.sh OUTDIR [DATA]
#
# OUTDIR receives summary.txt (what ran, how long, each step's last lines), steps.log (all output)
# and the JSON rows of the five benchmark runs: seven files. DATA is the folder that
# holds cap_lv_atlas/cap_lv_atlas_dev.npz and mmwhs_ct_labels/*.nii.gz (default ../shared/data).
# Environment:
#   DEVICE=cuda      device for every step (DEVICE=cpu QUICK=1 checks the script itself on a CPU)
#   QUICK=1          smoke-test sizes, not the figures
#   STEP_LIMIT_S     if set, every step is stopped after this many seconds; by default each step
#                    has its own limit (below, 575 s in all: the first H200 run's timings plus a
#                    margin, so the whole fits a 10-minute call); a stopped step says so, and the
#                    benchmarks print each result as soon as it is known
#   CARDIO="python3 -m cardiocore.cli"   how to run the CLI (the default needs no installed script)
# Needs only the compute layer's packages (torch, numpy, scipy, monai, torch-geometric,
# scikit-image, matplotlib, nibabel, pytest): no slicer-core, no VTK; the MRML tests skip.
set -uo pipefail

out=${1:?usage: Testing/gpu_checks.sh OUTDIR [DATA]}
data=${2:-../shared/data}
device=${DEVICE:-cuda}
quick=()          # smoke-test sizes: --quick, a fit on one phantom, 64 meshes for the 1-NNA step
fit_data=(--data "$data/mmwhs_ct_labels" --cases 1)
gen_many=6000
train_scale=0.1
if [[ "${QUICK:-0}" == 1 ]]; then quick=(--quick); fit_data=(--quick); gen_many=64; train_scale=0.002; fi
read -r -a cardio <<< "${CARDIO:-python3 -m cardiocore.cli}"
cd "$(dirname "$0")/.."
mkdir -p "$out"
summary="$out/summary.txt"
log="$out/steps.log"
: > "$summary"
: > "$log"
export PYTHONUNBUFFERED=1

atlas="$data/cap_lv_atlas/cap_lv_atlas_dev.npz"
labels="$data/mmwhs_ct_labels"
for needed in "$atlas" "$labels/ct_train_1002_label.nii.gz"; do
    if [[ ! -e "$needed" ]]; then
        echo "missing $needed: pass the folder that holds cap_lv_atlas/ and mmwhs_ct_labels/ as DATA" >&2
        exit 2
    fi
done

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, append to steps.log, note the outcome
    local name=$1
    local limit=${STEP_LIMIT_S:-$2}
    shift 2
    local start=$SECONDS
    echo "== $name: $*" | tee -a "$summary" >> "$log"
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$out/.step" 2>&1
    local rc=$?
    cat "$out/.step" >> "$log"
    local outcome="ok"
    if [[ $rc == 124 || $rc == 130 || $rc == 137 ]]; then outcome="STOPPED after ${limit} s"
    elif [[ $rc != 0 ]]; then outcome="FAILED (exit $rc)"; fi
    echo "   $outcome in $((SECONDS - start)) s" | tee -a "$summary"
    tail -n 4 "$out/.step" | sed 's/^/   | /' >> "$summary"
    rm -f "$out/.step"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; \
  "${cardio[@]}" info; } >> "$summary" 2>&1

# Cheapest and most wanted first: a step that runs out of time leaves the others' figures.
step tests 100 python3 -m pytest -m cuda -q -rs -p no:cacheprovider
step gen 75 "${cardio[@]}" bench gen --device "$device" --data "$atlas" "${quick[@]}" --json "$out/gen.json"
step predict 45 "${cardio[@]}" bench recon --predict-only --quick --device "$device" --json "$out/predict.json"
step core 75 "${cardio[@]}" bench core --device "$device" "${quick[@]}" --json "$out/core.json"
# A tenth of every training stage of the default model (ED, ES, conditional); written outside
# OUTDIR, whose files all come back from the device.
step gen_train 100 "${cardio[@]}" gen train --data "$atlas" --out "$(mktemp -d)/gen" --steps-scale "$train_scale" \
    --device "$device" --progress json
step fit 70 "${cardio[@]}" bench recon --device "$device" "${fit_data[@]}" --json "$out/fit.json"
# The sampler target's 1-NNA gap is within one set's noise at 1,000 meshes (6 sets of 150): score
# 40 sets (the timings of this step are for 6,000 meshes, not the target's 1,000).
step gen_many 110 "${cardio[@]}" bench gen --device "$device" --data "$atlas" --n "$gen_many" --json "$out/gen_many.json"
cat "$summary"
