# Sourced by shell/demo.sh and shell/test.sh: make sure .venv holds requirements.txt, then activate it.
#
# .venv is created (python3 -m venv) when it is missing or its interpreter no longer runs, and
# `pip install -r requirements.txt` runs when .venv/requirements.sha256 (written after the
# last successful install) differs from the hash of today's requirements.txt. One line on
# stderr says which of the three happened. The first install downloads PyTorch: a few minutes.
# PYTHON=/path/to/python3 picks the interpreter that creates the environment.

_venv_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_venv_dir="$_venv_root/.venv"
_venv_req="$_venv_root/requirements.txt"
_venv_stamp="$_venv_dir/requirements.sha256"

_venv_hash() {
  "${PYTHON:-python3}" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

ensure_venv() {
  local want have=""
  if ! command -v "${PYTHON:-python3}" > /dev/null; then
    echo "venv: ${PYTHON:-python3} not found; install Python 3.11+ or set PYTHON=/path/to/python3" >&2
    return 1
  fi
  want=$(_venv_hash "$_venv_req") || return 1
  if [ ! -x "$_venv_dir/bin/python" ] || ! "$_venv_dir/bin/python" -c "" 2> /dev/null; then
    if ! "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "venv: requirements.txt needs Python 3.11+, ${PYTHON:-python3} is $("${PYTHON:-python3}" -V 2>&1); set PYTHON=/path/to/python3.11" >&2
      return 1
    fi
    echo "venv: creating .venv and installing requirements.txt (first time: a few minutes, PyTorch is large)" >&2
    "${PYTHON:-python3}" -m venv "$_venv_dir" || return 1
    "$_venv_dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip || return 1
  else
    [ -f "$_venv_stamp" ] && have=$(cat "$_venv_stamp")
    if [ "$have" = "$want" ]; then
      echo "venv: .venv is up to date with requirements.txt" >&2
      # shellcheck disable=SC1091
      . "$_venv_dir/bin/activate"
      return 0
    fi
    echo "venv: requirements.txt changed since .venv was set up (or no record of it): pip install -r requirements.txt" >&2
  fi
  "$_venv_dir/bin/python" -m pip install -q --disable-pip-version-check -r "$_venv_req" || {
    echo "venv: pip install -r requirements.txt failed (is PyPI reachable?)" >&2
    return 1
  }
  echo "$want" > "$_venv_stamp"
  # shellcheck disable=SC1091
  . "$_venv_dir/bin/activate"
}
