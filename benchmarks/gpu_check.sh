#!/usr/bin/env bash
# One prepared GPU check (a few minutes on one GPU): the GPU tests, the gpu suite (latency, train step,
# memory), GPU runtimes (eager / compile / ONNX Runtime CUDA / TensorRT), then the accuracy-gpu suite (ResNet-18 x 4 modules x 3 seeds, 8 epochs on all 60,000
# Fashion-MNIST images, bf16 + channels_last; sized for < 5 min on one modern GPU).
# Usage, from the repository root on a CUDA machine with attnbench and dataset-fashion-mnist installed:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
out="${1:-results-gpu}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -m pytest -q tests/test_latency.py tests/test_train_checkpoint.py 2>&1 | tail -5
attnbench run --suite gpu --out "$out" --quiet
cat "$out/gpu.md"
# GPU runtimes: eager vs torch.compile vs ONNX Runtime's CUDA / TensorRT providers (skipped where absent)
cat > "$out/gpu-runtimes.yaml" <<'YAML'
name: gpu-runtimes
backbones: [resnet50]
modules: [none, se, cbam, eca]
input_size: 224
batch_size: [1, 32]
runtime: [eager, compile, onnxruntime, tensorrt]
metrics: [latency_gpu]
latency: {warmup: 10, rounds: 6, min_time: 0.3}
YAML
attnbench run --suite "$out/gpu-runtimes.yaml" --out "$out" --quiet
cat "$out/gpu-runtimes.md"
start=$(date +%s)
attnbench run --suite accuracy-gpu --out "$out" --quiet --resume   # --resume: a rerun continues after a kill
echo "accuracy-gpu: $(( $(date +%s) - start )) s wall"
cat "$out/accuracy-gpu.md"
