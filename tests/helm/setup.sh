#!/usr/bin/env bash
# Real Helm for the chart tests: helm-sdkpy (PyPI) ships Helm's Go library with a
# Python front end. It needs Python >= 3.12; the machine's default python3 may be
# older, so this finds a newer interpreter (PATH, pyenv's versions, Debian's), makes a
# virtualenv under the user's cache dir once, and prints its python.
set -euo pipefail

HELM_SDKPY_VERSION="${HELM_SDKPY_VERSION:-0.1.32}"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/media-fleet/helm-sdkpy-${HELM_SDKPY_VERSION}"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import helm_sdkpy' 2>/dev/null; then
  py=""
  for c in python3.14 python3.13 python3.12 "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/bin/python3.1[2-9] python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
      py="$c"
      break
    fi
  done
  if [ -z "$py" ]; then
    echo "helm setup: no Python >= 3.12 found (helm-sdkpy needs one); install python3.12+ or a pyenv version" >&2
    exit 1
  fi
  echo "helm setup: making $VENV with $("$py" --version) and helm-sdkpy ${HELM_SDKPY_VERSION}" >&2
  rm -rf "$VENV"
  "$py" -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "helm-sdkpy==${HELM_SDKPY_VERSION}" >&2
fi
echo "$VENV/bin/python"
