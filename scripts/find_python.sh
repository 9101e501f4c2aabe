#!/usr/bin/env bash
# Print the path of a Python interpreter that nnabla 1.39 supports (3.8, 3.9 or 3.10).
# Order: $PYTHON, python3.10/3.9/3.8 on PATH, pyenv's installed versions, python3.
set -u
ok() {
  "$1" -c 'import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 10) else 1)' >/dev/null 2>&1
}
if [ -n "${PYTHON:-}" ]; then
  if ok "$PYTHON"; then command -v "$PYTHON" || echo "$PYTHON"; exit 0; fi
  echo "error: PYTHON=$PYTHON is not a Python 3.8-3.10 interpreter (nnabla 1.39 has wheels only for those)." >&2
  exit 1
fi
for c in python3.10 python3.9 python3.8; do
  p=$(command -v "$c" 2>/dev/null) && ok "$p" && { echo "$p"; exit 0; }
done
root=${PYENV_ROOT:-$HOME/.pyenv}
for v in 3.10 3.9 3.8; do
  for p in $(ls -d "$root"/versions/$v.*/bin/python 2>/dev/null | sort -rV); do
    ok "$p" && { echo "$p"; exit 0; }
  done
done
p=$(command -v python3 2>/dev/null) && ok "$p" && { echo "$p"; exit 0; }
cat >&2 <<'MSG'
error: no Python 3.8-3.10 found (nnabla 1.39 publishes wheels only for those).
Install one, e.g. `pyenv install 3.10` or `apt-get install python3.10 python3.10-venv`,
then rerun, or point at it with `make PYTHON=/path/to/python3.10 ...`.
MSG
exit 1
