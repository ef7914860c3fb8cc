#!/usr/bin/env bash
# One prepared GPU check (run on a CUDA machine from the repository root; a few minutes):
# bf16 and fp16 training steps for both model kinds, host synchronisations per optimizer step
# (CUDA's sync debug mode), the memory-bounded loss against the plain one on CUDA, and
# checkpoint/resume on CUDA, and DDP / FSDP2 (scripts/gpu_parallel_check.py). See scripts/gpu_check.py. Prints a summary; writes the figures to
# ${OUT:-.}/gpu_check.json. Exits 2 with "no CUDA device" where there is none.
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-.}
python -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu_check: no CUDA device here; these checks need one (nothing was run)')" || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
status=0
timeout 300 python scripts/gpu_check.py "$@" || status=$?
# DDP and FSDP2 on CUDA, 2 steps each (one process: see the script)
timeout 120 python scripts/gpu_parallel_check.py || status=$?
exit $status
