#!/usr/bin/env bash
# The test command: installs what the tests need, then runs the whole suite (slow tests included)
# in parallel: pytest-xdist starts one worker process per CPU core, at most 4, each test on one thread.
#   bash runs/test.sh                 # everything
#   bash runs/test.sh -m "not slow"   # the fast part only (extra arguments go to pytest)
#   NANOCHAT_TEST_WORKERS=1 bash runs/test.sh   # in one process (or =N for N workers)
# A single file runs as usual without xdist: python -m pytest tests/test_gpt.py
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

# nproc counts OMP_NUM_THREADS as the number of cores, so it is asked first. More than 4 workers
# gains little: the quick path's end-to-end test alone takes minutes, and each worker holds its own
# PyTorch (about 1 GB).
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
workers=${NANOCHAT_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: NANOCHAT_TEST_WORKERS must be a number of worker processes, 1 or more (got '$workers')" >&2
    exit 2
fi
parallel=()
# loadscope: all tests of a module go to one worker, so a module's fixtures (a server, the quick
# path's demo run) are made once, as in a run in one process
[ "$workers" -gt 1 ] && parallel=(-n "$workers" --dist loadscope)
status=0  # (setup_env.sh, sourced above, turned on set -e: without `||` a failing run would end here)
python -m pytest tests -p no:cacheprovider ${parallel[@]+"${parallel[@]}"} "$@" || status=$?
if [ $status -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit $status
