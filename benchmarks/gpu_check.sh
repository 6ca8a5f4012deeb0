#!/usr/bin/env bash
# Prove the TensorRT path on a CUDA machine in one run (sized for 10 minutes on one GPU; not yet timed on one):
#
#   benchmarks/gpu_check.sh OUT [--find-links DIR] [--model RUN|MODEL.onnx] [--cuda 12|13]
#                               [--seconds S] [--batch-sizes 1,16,64,256] [--n-cells N] [--no-bench]
#
# 1. Finds the GPU with nvidia-smi and the CUDA major its driver runs (--cuda overrides).
# 2. Installs TensorRT (10 or 11, the build for that CUDA major) and pycuda if they do not import:
#    from --find-links DIR (a folder of wheels, no index at all) when given, else from the registries plus
#    NVIDIA's index, after checking within seconds that an index answers (offline: fails at once).
# 3. Trains a small model on synthetic cells unless --model names a trained one (a check needs a model
#    that tells the classes apart; random weights predict one class and prove nothing).
# 4. Runs `python -m wbc_deploy.bench.gpu_check`: the TensorRT engine and the other GPU backends against
#    ONNX Runtime FP32 on the CPU (max |p - p_ort| <= 1e-2, rows summing to 1), then the throughput table
#    with wbc_deploy.bench, reusing the engine and timing cache the check built.
# Everything is written under OUT: gpu_check.log, gpu_check.json, throughput.{json,md}, the model, the cache.
#
# Exit codes: 0 TensorRT proven; 1 a GPU backend ran and disagrees with ONNX Runtime (the engine: "TensorRT
# NOT PROVEN"); 2 bad arguments or an unusable environment; 3 a CUDA GPU is present but TensorRT could not run
# ("TensorRT NOT PROVEN"); 4 no CUDA GPU on this machine (nothing proven); 5 the reference model predicts
# fewer than two classes on the check cells ("TensorRT NOT PROVEN").
set -uo pipefail

# The model checked when --model is not given: the bundled real-cell model (its float16 weights are exported to
# a fresh FP32 ONNX, from which the engine is built). Empty: train one here (synth cells + `train --preset tiny`).
BUNDLED_MODEL="default"

# NVIDIA's package index (the TensorRT wheels live there); WBC_NVIDIA_INDEX points at a mirror instead.
NVIDIA_INDEX="${WBC_NVIDIA_INDEX:-https://pypi.nvidia.com}"
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die_usage() { echo "gpu_check: $*" >&2; echo "usage: benchmarks/gpu_check.sh OUT [--find-links DIR] [--model M] [--cuda 12|13] (--help for more)" >&2; exit 2; }
not_proven() { echo "TensorRT NOT PROVEN: $*"; exit 3; }

OUT="" FIND_LINKS="" MODEL="" CUDA_MAJOR=""
PYARGS=()
while (($#)); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --find-links|--model|--cuda|--seconds|--batch-sizes|--n-cells)
            [[ $# -ge 2 && -n "$2" ]] || die_usage "$1 needs a value"
            case "$1" in
                --find-links) FIND_LINKS=$2 ;;
                --model) MODEL=$2 ;;
                --cuda) CUDA_MAJOR=$2 ;;
                *) PYARGS+=("$1" "$2") ;;
            esac
            shift 2 ;;
        --no-bench) PYARGS+=("$1"); shift ;;
        -*) die_usage "unknown option $1" ;;
        *) [[ -z "$OUT" ]] || die_usage "give one output folder (got $OUT and $1)"; OUT=$1; shift ;;
    esac
done
[[ -n "$OUT" ]] || die_usage "give the output folder everything is written to"
[[ -z "$FIND_LINKS" || -d "$FIND_LINKS" ]] || die_usage "--find-links $FIND_LINKS is not a folder"
[[ -z "$CUDA_MAJOR" || "$CUDA_MAJOR" == 12 || "$CUDA_MAJOR" == 13 ]] || die_usage "--cuda takes 12 or 13, got $CUDA_MAJOR"
[[ -z "$MODEL" || -e "$MODEL" || "$MODEL" == default ]] || die_usage "--model $MODEL not found"
mkdir -p "$OUT" 2>/dev/null && [[ -w "$OUT" ]] || die_usage "cannot write to the output folder $OUT"
OUT=$(cd "$OUT" && pwd)
[[ -z "$FIND_LINKS" ]] || FIND_LINKS=$(cd "$FIND_LINKS" && pwd)
[[ -z "$MODEL" || "$MODEL" == default ]] || MODEL=$(cd "$(dirname "$MODEL")" && pwd)/$(basename "$MODEL")
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
cd "$(dirname "$0")/.." || exit 2
echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), writing to $OUT"

# -- 1. the GPU ------------------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU on this machine (no nvidia-smi): TensorRT was not checked, nothing is proven"
    exit 4
fi
if ! SMI=$(nvidia-smi 2>&1); then
    not_proven "nvidia-smi is installed but fails (${SMI%%$'\n'*}): the NVIDIA driver is not usable"
fi
GPUS=$(nvidia-smi -L 2>/dev/null | grep '^GPU ' || true)
if [[ -z "$GPUS" ]]; then
    echo "gpu_check: nvidia-smi lists no GPU: TensorRT was not checked, nothing is proven"
    exit 4
fi
DRIVER_CUDA=$(sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' <<<"$SMI" | head -n 1)
# A CUDA 13 driver also runs CUDA 12 builds, not the other way round: 12 unless the driver says 13+.
CU=${CUDA_MAJOR:-$([[ "${DRIVER_CUDA:-0}" -ge 13 ]] && echo 13 || echo 12)}
echo "gpu_check: GPU: ${GPUS%%$'\n'*}; driver CUDA ${DRIVER_CUDA:-unknown}; TensorRT build for CUDA $CU"

# -- 2. Python and packages -----------------------------------------------------------------------------
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=$(command -v python3 || command -v python); fi
echo "gpu_check: using $PY ($("$PY" --version 2>&1))"
if ! "$PY" -c "import wbc_deploy" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check: wbc-deploy is not installed; using this checkout via PYTHONPATH"
fi
for heavy in torch onnxruntime; do
    "$PY" -c "import $heavy" 2>/dev/null || { echo "gpu_check: cannot run: python package '$heavy' is missing (install PyTorch and onnxruntime-gpu first)" >&2; exit 2; }
done

# Does an index answer for PKG within seconds? (pip's own client and configuration; offline: fails at once)
index_answers() { "$PY" -m pip index versions "$1" --timeout 5 --retries 0 --extra-index-url "$NVIDIA_INDEX" >/dev/null 2>&1; }
WHY=""
pip_install() {  # pip_install PKG...: from --find-links alone, else the registries (+ NVIDIA's index); WHY on failure
    if [[ -n "$FIND_LINKS" ]]; then
        echo "gpu_check: installing $* from $FIND_LINKS (no index)"
        "$PY" -m pip install -q --no-index --find-links "$FIND_LINKS" "$@" || { WHY="$* not installable from $FIND_LINKS"; return 1; }
    else
        index_answers "${1%%[<>=]*}" \
            || { WHY="no package index answers for ${1%%[<>=]*} within seconds (offline?): pass --find-links DIR with the wheels"; return 1; }
        echo "gpu_check: installing $*"
        "$PY" -m pip install -q --timeout 30 --retries 1 --extra-index-url "$NVIDIA_INDEX" "$@" \
            || { WHY="pip could not install $* (pycuda compiles against the CUDA toolkit's headers: install the toolkit or set CUDA_ROOT)"; return 1; }
    fi
}

# Light dependencies the check imports (one Python start for all: torch-era imports are slow)
missing=$("$PY" - <<'PYEOF'
import importlib.util
need = {"torchvision": "torchvision", "onnx": "onnx", "onnxconverter_common": "onnxconverter-common", "rich": "rich",
        "PIL": "pillow", "scipy": "scipy", "safetensors": "safetensors", "psutil": "psutil", "typer": "typer",
        "skimage": "scikit-image"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
if [[ -n "$missing" ]]; then
    # shellcheck disable=SC2086
    pip_install $missing || { echo "gpu_check: cannot run without $missing: $WHY" >&2; exit 2; }
fi

if ! "$PY" -c "import tensorrt, pycuda.driver" 2>/dev/null; then
    pip_install "tensorrt-cu${CU}>=10,<12" "pycuda>=2025.1.2" || not_proven "TensorRT and pycuda are not installed: $WHY"
fi
if ! ERR=$("$PY" -c "import tensorrt, pycuda.driver as c; c.init(); assert c.Device.count() > 0, 'pycuda sees no CUDA device'; print(tensorrt.__version__)" 2>&1); then
    not_proven "TensorRT or pycuda does not load: ${ERR##*$'\n'}"
fi
echo "gpu_check: TensorRT ${ERR##*$'\n'}"

# -- 3. a trained model and check cells -----------------------------------------------------------------
MODEL=${MODEL:-$BUNDLED_MODEL}
if [[ -z "$MODEL" ]]; then
    MODEL=$OUT/run
    if [[ ! -f "$MODEL/model.safetensors" ]]; then
        echo "gpu_check: training a small model on synthetic cells ($OUT/run; pass --model to check another)"
        rm -rf "$OUT/run"
        "$PY" -m wbc_deploy synth cells "$OUT/train-cells" --per-class 120 --size 64 --seed 0 --quiet \
            && "$PY" -m wbc_deploy train "$OUT/train-cells" --out "$OUT/run" --preset tiny --quiet \
            || { echo "gpu_check: cannot run: training the check model failed" >&2; exit 2; }
    fi
fi
if [[ ! -d "$OUT/check-cells" ]]; then
    "$PY" -m wbc_deploy synth cells "$OUT/check-cells" --per-class 40 --size 64 --seed 123 --quiet \
        || { echo "gpu_check: cannot run: could not make the check cells" >&2; exit 2; }
fi

# -- 4. the check and the throughput table --------------------------------------------------------------
"$PY" -m wbc_deploy.bench.gpu_check --out "$OUT" --model "$MODEL" --cells "$OUT/check-cells" --quiet "${PYARGS[@]}"
exit $?
