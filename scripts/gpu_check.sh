#!/usr/bin/env bash
# The GPU checks of the training engine: at most 8 minutes (the steps' time limits add up to
# 470 s). Not run on a GPU yet.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        (default: $OUT if set, else ./gpu_check_out)
#
# 1. the CUDA tests (tests/test_cuda.py: tiny pretraining in fp32 and bf16, deterministic
#    repeats, GradNorm/PCGrad/monitor on the GPU, the geometry core's CUDA path vs the CPU one);
# 2. the geometry monitor's overhead per training step on the GPU (scripts/bench_monitor.py), and
#    the geometry core's CUDA path against torchjd on CUDA and the device's read floor
#    (scripts/bench_geometry.py --device cuda);
# 3. a pretraining epoch in fp32 and in bf16, side by side (scripts/bench_precision.py);
# 4. with 2 or more GPUs visible: a tiny pretraining over 2 processes (torchrun, nccl).
# Each step's log is OUT_DIR/<step>.log, its figures OUT_DIR/<step>.json, and
# OUT_DIR/summary.json has every step's exit status and seconds.
# The tests read the datasets: MATMTL_DATA_DIR, else ./shared/data or ../shared/data.
# Exit status: 0 when every step passed, or when there is no CUDA GPU (nothing is checked:
# summary.json says "gpu": false); 1 when a step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out" && out=$(cd "$out" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for d in shared/data ../shared/data; do
    [[ -z "${MATMTL_DATA_DIR:-}" && -d "$d" ]] && export MATMTL_DATA_DIR="$PWD/$d"
done
export MATMTL_CACHE_DIR="$out/cache"

gpus=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [[ "$gpus" == "0" ]]; then
    echo "gpu_check: no CUDA GPU visible to torch here; nothing checked (exit 0)."
    echo '{"gpu": false, "steps": {}}' > "$out/summary.json"
    exit 0
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$out/env.log" 2>&1

declare -A rc secs
step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit, log, record status and seconds
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name (at most ${limit}s)"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc[$name]=$?; secs[$name]=$((SECONDS - t0))
    tail -n 12 "$out/$name.log"
    echo "-- $name: exit ${rc[$name]} in ${secs[$name]}s"
}

step cuda_tests 180 python -m pytest tests/test_cuda.py -q -rs --junitxml="$out/cuda_tests.xml"
step bench_monitor 50 python scripts/bench_monitor.py --device cuda --steps 200 --json "$out/bench_monitor.json"
step bench_geometry 30 python scripts/bench_geometry.py --device cuda --repeats 21 --json "$out/bench_geometry.json"
step bench_precision 100 python scripts/bench_precision.py --device cuda --size large --rows 131072 \
    --batch 1024 --epochs 3 --json "$out/bench_precision.json"
step bench_precision_pcgrad 50 python scripts/bench_precision.py --device cuda --size large --rows 16384 \
    --batch 1024 --epochs 3 --case gradnorm+pcgrad --json "$out/bench_precision_pcgrad.json"
if (( gpus >= 2 )); then
    step nccl_2proc 60 torchrun --standalone --nproc_per_node=2 -m matmtl pretrain --device cuda --size tiny \
        --max-rows 4000 --holdout-fold 0 --out "$out/nccl_run"
fi

status=0
summary="{\"gpu\": true, \"gpus\": $gpus, \"steps\": {"
sep=""
for name in "${!rc[@]}"; do
    summary+="$sep\"$name\": {\"exit\": ${rc[$name]}, \"seconds\": ${secs[$name]}}"
    sep=", "
    (( rc[$name] != 0 )) && status=1
done
echo "$summary}}" > "$out/summary.json"
cat "$out/summary.json"
exit $status
