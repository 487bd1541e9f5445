# Sourced by setup_env.sh and setup_mobile.sh: `venv_with_torch VENV REQUIREMENTS` makes VENV if it is missing,
# installs torch into it first, then REQUIREMENTS, then runs pip check. Safe to run again: it only installs what
# is missing. TORCH_SPEC picks another torch build (e.g. a CUDA 12 one); PYTHON the interpreter for the venv.
venv_with_torch() {
  local venv=$1 requirements=$2
  if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
  fi
  # torch before the rest: otherwise pip resolves `torch` itself and may pull a multi-GB CUDA build.
  # TORCH_SPEC may hold pip options too (e.g. "torch --index-url URL"): split it into words on purpose.
  # shellcheck disable=SC2086
  "$venv/bin/python" -c "import torch" 2>/dev/null || "$venv/bin/python" -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
  "$venv/bin/python" -m pip install -q -r "$requirements"
}
