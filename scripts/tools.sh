#!/usr/bin/env bash
# Installs the edge worker's toolchain into a per-user cache named by version, unless it is already
# there, and prints `export` lines for it (eval "$(scripts/tools.sh)"). Versions: ../shared/TOOLCHAIN.md.
# Logs go to stderr. Nothing is downloaded from GitHub: worker-build is pointed at these binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${XDG_CACHE_HOME:-$HOME/.cache}/keygate/tools"
wasm_bindgen=0.2.130 # must equal the wasm-bindgen pinned in edge-worker/Cargo.toml
worker_build=0.8.7

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown >&2
if [ ! -x "$tools/wasm-bindgen-$wasm_bindgen/bin/wasm-bindgen" ]; then
  # Without --locked: its lock file wants a webpki-roots the registry does not have.
  cargo install wasm-bindgen-cli --version "=$wasm_bindgen" --root "$tools/wasm-bindgen-$wasm_bindgen" >&2
fi
if [ ! -x "$tools/worker-build-$worker_build/bin/worker-build" ]; then
  cargo install worker-build --version "=$worker_build" --locked --root "$tools/worker-build-$worker_build" >&2
fi
# The node packages, keyed by the lock file, so a change of versions installs afresh.
node_dir="$tools/node-$(sha256sum tools/node/package-lock.json | cut -c1-16)"
if [ ! -x "$node_dir/node_modules/.bin/wrangler" ]; then
  rm -rf "$node_dir" && mkdir -p "$node_dir"
  cp tools/node/package.json tools/node/package-lock.json "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund >&2)
fi

cat <<EXPORTS
export WASM_BINDGEN_BIN="$tools/wasm-bindgen-$wasm_bindgen/bin/wasm-bindgen"
export WASM_OPT_BIN="$node_dir/node_modules/binaryen/bin/wasm-opt"
export ESBUILD_BIN="$node_dir/node_modules/.bin/esbuild"
export WRANGLER="$node_dir/node_modules/.bin/wrangler"
export KEYGATE_NODE_MODULES="$node_dir/node_modules"
export PATH="$tools/worker-build-$worker_build/bin:$tools/wasm-bindgen-$wasm_bindgen/bin:\$PATH"
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
EXPORTS
