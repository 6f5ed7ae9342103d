#!/usr/bin/env bash
# One prepared GPU check (a few minutes on one GPU): the GPU tests, then the gpu suite.
# Usage, from the repository root on a CUDA machine with attnbench installed:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
out="${1:-results-gpu}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -m pytest -q tests/test_latency.py 2>&1 | tail -5
attnbench run --suite gpu --out "$out" --quiet
cat "$out/gpu.md"
