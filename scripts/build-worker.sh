#!/usr/bin/env bash
# Builds the edge worker (release, wasm-opt'd) into edge-worker/build with the pinned local tools.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/tools.sh)"
cd edge-worker
worker-build --release >&2
