#!/usr/bin/env bash
# Installs what the web console's browser test needs: Debian's chromium (apt, as root, when missing)
# and playwright-core (tests/console/package-lock.json, pinned) into a per-user cache folder named by
# the lock file, unless they are there already; prints `export KEYGATE_CONSOLE_NODE="<folder>"`.
# Logs go to stderr. As in graphql-node.sh, the test file is copied beside its node_modules, because
# node resolves an ES module's imports from the module's own folder.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium > /dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "console-node: chromium is missing; install it as root: apt-get install -y chromium" >&2
    exit 1
  fi
  echo "console-node: installing chromium (Debian)" >&2
  apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >&2
fi

src=tests/console
dir="${XDG_CACHE_HOME:-$HOME/.cache}/keygate/tools/console-node-$(sha256sum "$src/package-lock.json" | cut -c1-16)"
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if [ ! -f "$dir/.installed" ]; then
  echo "console-node: installing into $dir" >&2
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$src/package.json" "$src/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund >&2)
  touch "$dir/.installed"
fi
for script in "$src"/*.mjs; do
  cp "$script" "$dir/.$(basename "$script").tmp"
  mv -f "$dir/.$(basename "$script").tmp" "$dir/$(basename "$script")"
done
flock -u 9

echo "export KEYGATE_CONSOLE_NODE=\"$dir\""
