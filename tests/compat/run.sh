#!/usr/bin/env bash
# The compatibility runs (`make test-compat`, CI's last step), in two virtual environments on top of the main one
# (--system-site-packages: torch, onnx, onnxruntime and the installed package are shared, only what differs is added):
#   floor:   transformers at pyproject's lower bound             -> the default test suite
#   optimum: optimum-onnx (it pins transformers<4.58), onnxruntime-genai
#                                                                -> tests/test_dropin.py on folders that the main
#            environment's transformers 5 exports (WISPARSE_EXPORT_PYTHON): Optimum and genai open them as they are.
# PY: the main interpreter (default python3); COMPAT_DIR: where the environments live (kept between runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
ROOT=${COMPAT_DIR:-${TMPDIR:-/tmp}/wisparse-compat}
FLOOR=$(sed -n 's/^ *"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)
[ -n "$FLOOR" ] || { echo "no transformers lower bound in pyproject.toml" >&2; exit 2; }

env_with() {  # env_with NAME REQUIREMENT...: the environment's python, created and topped up
  local dir="$ROOT/$1"
  shift
  [ -x "$dir/bin/python" ] || "$PY" -m venv --system-site-packages "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2
  echo "$dir/bin/python"
}

floor=$(env_with floor "transformers==$FLOOR")
echo "== default suite, transformers $FLOOR"
"$floor" -m pytest -q
optimum=$(env_with optimum "optimum-onnx==0.1.0" onnxruntime-genai)
echo "== export folders in Optimum and onnxruntime-genai, $("$optimum" -c 'import transformers as t; print("transformers", t.__version__)')"
WISPARSE_EXPORT_PYTHON=$(command -v "$PY") "$optimum" -m pytest -q tests/test_dropin.py
