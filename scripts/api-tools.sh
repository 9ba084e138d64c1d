#!/usr/bin/env bash
# Installs the tools that check the control plane's OpenAPI document from outside, into a per-user cache
# named by version unless they are already there: schemathesis (fuzzes a live server from the document),
# openapi-spec-validator (checks the document itself) and openapi-python-client (generates a client from
# it), and pytest for the generated client's test. Prints `export` lines for their paths.
set -euo pipefail
schemathesis=4.32.5
validator=0.9.0
generator=0.29.1
pytest=8.4.2
dir="${XDG_CACHE_HOME:-$HOME/.cache}/keygate/tools/api-tools-$schemathesis-$validator-$generator-$pytest"
if [ ! -x "$dir/bin/openapi-python-client" ]; then
  rm -rf "$dir"
  python3 -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis" \
    "openapi-spec-validator==$validator" "openapi-python-client==$generator" "pytest==$pytest" >&2
fi
echo "export SCHEMATHESIS=$dir/bin/schemathesis"
echo "export OPENAPI_SPEC_VALIDATOR=$dir/bin/openapi-spec-validator"
echo "export OPENAPI_PYTHON_CLIENT=$dir/bin/openapi-python-client"
echo "export API_TOOLS_PYTHON=$dir/bin/python"
