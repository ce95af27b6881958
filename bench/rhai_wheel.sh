#!/usr/bin/env bash
# Print the path of an abi3 rhai_py wheel for the peers' venvs: the newest in dist/
# (the rhai-py owner's `make -C rhai-py wheel`) or bench/.wheels/, else build one
# into bench/.wheels/ with maturin from the main venv.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=$(ls -t dist/rhai_py-*abi3*.whl bench/.wheels/rhai_py-*abi3*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  (cd rhai-py && ../.venv/bin/maturin build --release --quiet -o ../bench/.wheels \
     -i ../.venv/bin/python) >&2
  wheel=$(ls -t bench/.wheels/rhai_py-*abi3*.whl | head -1)
fi
echo "$PWD/$wheel"
