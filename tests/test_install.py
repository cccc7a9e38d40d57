"""Install habits: PyTorch is not a hard dependency (pip's default Linux build is the multi-GB CUDA
one), so importing nanochat without it says in one line what to install; and an installed copy of
the library (`pip install .`, not -e) says in one line that nanochat runs from a checkout."""

import os
import sys
import shutil
import subprocess

from nanochat.common import repo_root

ROOT = repo_root()


def test_without_pytorch_a_stage_says_in_one_line_how_to_install_it():
    # -S: no site-packages, so no torch; the repo on PYTHONPATH gives nanochat and scripts
    r = subprocess.run([sys.executable, "-S", "-m", "scripts.base_train", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: nanochat needs PyTorch")
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in r.stderr


def test_an_installed_copy_of_the_library_says_that_nanochat_runs_from_a_checkout(tmp_path):
    shutil.copytree(os.path.join(ROOT, "nanochat"), tmp_path / "site-packages" / "nanochat")
    r = subprocess.run([sys.executable, "-c", "import nanochat.gpt; print(nanochat.__file__)"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path / "site-packages")))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(tmp_path / "site-packages" / "nanochat"))  # the copy, not the checkout
    assert r.stderr.count("\n") == 1 and "runs from a checkout of its repository" in r.stderr
    # in the checkout: silent
    r = subprocess.run([sys.executable, "-c", "import nanochat.gpt"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stderr == ""
