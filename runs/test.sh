#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the whole suite (slow tests included).
#   bash runs/test.sh                 # everything
#   bash runs/test.sh -m "not slow"   # the fast part only (extra arguments go to pytest)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source runs/setup_env.sh || exit 1

# the browser test drives Debian's Chromium headless
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    echo "installing chromium for the browser test"
    ($SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the browser test will be skipped outside CI"
fi

# the code sandbox (nanochat/execution.py) isolates untrusted programs with bubblewrap
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    echo "installing bubblewrap for the code sandbox"
    ($SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
        || echo "warning: could not install bubblewrap; the sandbox falls back to its Python guard (not a boundary) and the isolation tests are skipped outside CI"
fi

# lint first (rules in pyproject.toml [tool.ruff]): unused imports, undefined names, stray whitespace
if ! ruff check .; then
    echo "error: ruff check failed; fix the lines above (ruff check . --fix does the safe ones)" >&2
    exit 1
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m pytest tests -p no:cacheprovider "$@"
status=$?
if [ $status -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit $status
