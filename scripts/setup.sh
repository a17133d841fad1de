#!/usr/bin/env bash
# Installs everything the project needs on a Debian/Ubuntu machine:
#   bash scripts/setup.sh          Debian's Fashion-MNIST files + the Python requirements
#   bash scripts/setup.sh --test   also Chromium (browser test) and the test requirements
# then `pip install -e . --no-deps` (the packages and the diffusion-* commands, see pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

debian=(dataset-fashion-mnist)
[ "$with_tests" = 1 ] && debian+=(chromium)
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in "${debian[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" != 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  echo "setup: no apt-get here; install ${debian[*]} with your package manager if you need them" >&2
fi

if [ "$with_tests" = 1 ]; then
  python -m pip install -q -r requirements-test.txt
else
  python -m pip install -q -r requirements.txt
fi
# The project itself, editable: the packages diffusion/training/studio and the diffusion-* commands.
python -m pip install -q -e . --no-deps
# The bundled model's UNet compiled ahead of time for this CPU (about a minute on 2 cores; the studio
# loads it at start-up and runs eagerly without it). Skipped for the test set-up, which compiles its own.
if [ "$with_tests" = 0 ]; then
  python -m diffusion.compiled checkpoints/fashion-mnist >/dev/null || echo "setup: no compiled UNet (the studio runs eagerly)" >&2
fi
