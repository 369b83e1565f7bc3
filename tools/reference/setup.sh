#!/bin/sh
# Creates tools/reference/.venv (beside this script) and installs the pinned
# reference packages from requirements.txt into it. Idempotent: re-running it
# reuses the existing venv and pip skips what is already installed.
# Usage: sh tools/reference/setup.sh   (from anywhere)
# Note: ftfy is deliberately NOT installed; the tokenizer goldens are those of
# transformers' CLIPTokenizer without ftfy.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
if [ ! -x "$here/.venv/bin/python" ]; then
    "$py" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet -r "$here/requirements.txt"
if "$here/.venv/bin/python" -c 'import ftfy' 2>/dev/null; then
    echo "setup.sh: warning: ftfy is installed in $here/.venv; the tokenizer goldens assume it is absent" >&2
fi
echo "reference venv ready: $here/.venv"
