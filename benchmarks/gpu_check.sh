#!/usr/bin/env bash
# Prove the GPU path in one run: export a model to ONNX, build a TensorRT FP16 engine, check its top-1
# agreement with ONNX Runtime FP32 (>= 99.5%) and print throughput; also PyTorch CUDA FP32/FP16 and the
# ONNX Runtime CUDA/TensorRT execution providers. What cannot run on this machine (no tensorrt, pycuda,
# onnxruntime-gpu or CUDA device) is reported as SKIP with the reason; everything else is still checked.
#
# Works on a bare machine with PyTorch and onnxruntime but no wbc-deploy install: the package is used
# from this checkout (PYTHONPATH), and missing light dependencies are installed with pip if possible.
#
#   benchmarks/gpu_check.sh [--arch wbcnet] [--model RUN] [--images 256] [--batch 64] [--seconds 3] [--out DIR]
#
# Exit code: 0 when every check that ran passed, 1 when one failed, 2 when the environment is unusable.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=$(command -v python3 || command -v python); fi
echo "gpu_check: using $PY ($("$PY" --version 2>&1))"

if ! "$PY" -c "import wbc_deploy" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check: wbc-deploy is not installed; using this checkout via PYTHONPATH"
fi

# The check needs torch + onnxruntime (not installed here: they are large and machine-specific) and a few
# light packages (installed if missing and pip can reach an index).
for heavy in torch onnxruntime; do
    if ! "$PY" -c "import $heavy" 2>/dev/null; then
        echo "gpu_check: cannot run: python package '$heavy' is missing (install PyTorch / onnxruntime or onnxruntime-gpu first)" >&2
        exit 2
    fi
done
declare -A PIP_NAME=([torchvision]=torchvision [onnx]=onnx [rich]=rich [PIL]=pillow [scipy]=scipy [safetensors]=safetensors [psutil]=psutil)
missing=()
for mod in torchvision onnx rich PIL scipy safetensors psutil; do
    "$PY" -c "import $mod" 2>/dev/null || missing+=("${PIP_NAME[$mod]}")
done
if (( ${#missing[@]} )); then
    echo "gpu_check: installing missing light dependencies: ${missing[*]}"
    if ! "$PY" -m pip install -q "${missing[@]}"; then
        echo "gpu_check: cannot run: could not install ${missing[*]} (no package index reachable?); install them and rerun" >&2
        exit 2
    fi
fi

status=0
"$PY" -m wbc_deploy.converters.gpu_check "$@" || status=$?

# Throughput of the GPU (and CPU) backends side by side, with the code of `wbc-deploy benchmark`
# (wbc_deploy.bench): JSON + Markdown in benchmarks/results/model_throughput_gpu.*. WBC_BENCH=0 skips it;
# WBC_BENCH_ARGS replaces the arguments of benchmarks/model_throughput.py.
if [[ "${WBC_BENCH:-1}" != 0 ]]; then
    echo "gpu_check: model throughput benchmark (benchmarks/model_throughput.py)"
    # shellcheck disable=SC2086
    "$PY" benchmarks/model_throughput.py ${WBC_BENCH_ARGS:---backends torch-cuda,torch-cuda-fp16,ort-cuda,ort-trt,trt,ort,ort-int8 --batch-sizes 1,16,64,256 --seconds 3 --no-tune --int8-accuracy 0 --agreement-cells 64 --name model_throughput_gpu --accept-load} \
        || echo "gpu_check: the throughput benchmark did not finish (exit $?); the checks above stand" >&2
fi
exit "$status"
