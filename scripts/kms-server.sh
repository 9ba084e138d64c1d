#!/usr/bin/env bash
# Installs the KMS API server the tests use (moto's server, from PyPI) into a per-user cache named by
# version, unless it is already there, and prints the path of its `moto_server` binary.
set -euo pipefail
version=5.2.5
dir="${XDG_CACHE_HOME:-$HOME/.cache}/keygate/tools/moto-$version"
if [ ! -x "$dir/bin/moto_server" ]; then
  rm -rf "$dir"
  python3 -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$version" >&2
fi
echo "$dir/bin/moto_server"
