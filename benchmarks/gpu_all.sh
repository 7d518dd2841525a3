#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one go, for a short lease on a CUDA machine.
#
# Usage, from the repository root, on a machine with CUDA, PyTorch and (optionally) the
# comparison libraries (pytorch-optimizer, torch-optimizer, lion-pytorch, heavyball):
#
#     OUT=/some/dir bash benchmarks/gpu_all.sh
#
# Each part runs under its own time limit and writes as it goes (step_time.py appends one JSON
# line per finished row), so a part cut short keeps what it measured. Parts, in order:
#   1. step_time.py: ms/step, ratio to torch's fused AdamW and to the bandwidth floor, and the
#      first step's wall time (compilation included) of every optimizer and library row;
#   2. muon_step.py: the Muon step against its flop floor and the libraries;
#   3. preconditioner_step.py --device cuda: Shampoo, SOAP, PSGD Kron against the libraries;
#   4. the CUDA tests (compiled flat path on CUDA equals the eager path, segmented ones too);
#   5. first_step_latency.py --device cuda: cold and warm first compiled step and graph count of
#      the flat path, elementwise (AdamW) and segmented (AdamP, Stable-SPAM).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gradkit_gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)  # cold compile caches: first steps include compiling
export TORCHINDUCTOR_CACHE_DIR
STEP_LIMIT=${STEP_LIMIT:-270}
MUON_LIMIT=${MUON_LIMIT:-90}
PRECOND_LIMIT=${PRECOND_LIMIT:-80}
TEST_LIMIT=${TEST_LIMIT:-90}
LATENCY_LIMIT=${LATENCY_LIMIT:-150}
PARTS=${PARTS:-1,2,3,4,5}  # which parts to run, e.g. PARTS=1,5
part() { [[ ",$PARTS," == *",$1,"* ]]; }

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
date -u

part 1 && {
echo "== 1. step time (benchmarks/step_time.py)"
STEP_OPTIMIZERS=${STEP_OPTIMIZERS:-adamw,sgd,adamp,novograd,sgdp,mars,stable_spam,ranger21,lion,adam,amsgrad,madgrad,diffgrad,ademamix}
(cd benchmarks && timeout "$STEP_LIMIT" python3 step_time.py --iters 50 \
    --optimizers "$STEP_OPTIMIZERS" --exclude "${STEP_EXCLUDE:-}" \
    --jsonl "$OUT/step_time.jsonl" --json "$OUT/step_time.json") 2>&1 | grep -v '^{' \
    || echo "(step_time stopped: rows so far are in step_time.jsonl)"
}

part 2 && {
echo "== 2. Muon step (benchmarks/muon_step.py)"
(cd benchmarks && timeout "$MUON_LIMIT" python3 muon_step.py --iters 30 --json "$OUT/muon_step.json") 2>&1 \
    || echo "(muon_step stopped)"
}

part 3 && {
echo "== 3. preconditioner step (benchmarks/preconditioner_step.py --device cuda)"
(cd benchmarks && timeout "$PRECOND_LIMIT" python3 preconditioner_step.py --device cuda --rounds 3 --steps 10) 2>&1 \
    || echo "(preconditioner_step stopped)"
}

part 4 && {
echo "== 4. CUDA tests"
timeout "$TEST_LIMIT" python3 -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/core/test_fast_path.py tests/core/test_equivalence.py tests/core/test_segments.py \
    -k "cuda or device" 2>&1 | tail -15 || echo "(tests stopped)"
}

part 5 && {
echo "== 5. first compiled step on CUDA (benchmarks/first_step_latency.py --device cuda)"
(cd benchmarks && timeout "$LATENCY_LIMIT" python3 first_step_latency.py --device cuda \
    --optimizers "${LATENCY_OPTIMIZERS:-adamw,adamp,stable_spam}" --steps 200 \
    --json "$OUT/first_step_latency.json") 2>&1 | grep -v '^{' || echo "(first_step_latency stopped)"
}
date -u
