#!/usr/bin/env bash
# Builds the edge worker (release, wasm-opt'd) into edge-worker/build with the pinned local tools, and gives
# it a plain module entry (scripts/plain-entry.mjs says why).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/tools.sh)"
(cd edge-worker && worker-build --release >&2)
node scripts/plain-entry.mjs edge-worker/build/index.js
