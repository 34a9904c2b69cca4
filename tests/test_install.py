"""``pip install .`` into a fresh virtual environment gives working console commands.

The environment is new (``python -m venv``) and sees MXNet and the other dependencies through one ``.pth``
line naming this environment's site-packages (a plain path: the editable install of the checkout that
lives there is not activated). pip installs a copy of the checkout with ``--no-deps --no-build-isolation``,
so nothing is fetched. The commands then run from another folder, and the package they import is the
installed copy, not the checkout.
"""

import os
import shutil
import subprocess
import sys
import sysconfig

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, cwd, env, timeout=120):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    source = root / "src"  # a copy: an in-tree build writes build/ and *.egg-info beside setup.py
    keep = ("resnest_gluon", "setup.py", "pyproject.toml", "README.md")
    for name in keep:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(
                path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build")
            )
        else:
            shutil.copy(path, source / name)
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, {}
    ).stdout
    # one plain path line: MXNet, numpy, pip and setuptools of this environment; not its .pth files
    (open(os.path.join(purelib.strip(), "deps.pth"), "w")).write(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    # --ignore-installed: the checkout's own editable install is visible through the path line; never
    # touch it
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--ignore-installed"]
    run(install + ["-q", str(source)], root, env, timeout=300)
    shutil.rmtree(source)  # the commands must not need the source any more
    return env_dir, env, root


def test_console_commands_of_a_fresh_install(venv):
    env_dir, env, root = venv
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    bin_dir = env_dir / "bin"
    where = run(
        [str(bin_dir / "python"), "-c", "import resnest_gluon; print(resnest_gluon.__file__)"], elsewhere, env
    )
    assert where.stdout.strip().startswith(str(env_dir)), where.stdout  # the installed copy
    assert "--rec-train" in run([str(bin_dir / "resnest-train"), "--help"], elsewhere, env).stdout
    assert "--onnx" in run([str(bin_dir / "resnest-predict"), "--help"], elsewhere, env).stdout
    # resnest-im2rec on a tiny folder: list, then pack
    for i, name in enumerate(("cat", "cat", "dog")):
        folder = elsewhere / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((20, 24, 3), 40 * i, np.uint8))
    im2rec = str(bin_dir / "resnest-im2rec")
    run([im2rec, "--list", "--recursive", "tiny", "images"], elsewhere, env)
    run([im2rec, "tiny", "images", "--no-progress"], elsewhere, env)
    assert (elsewhere / "tiny.rec").stat().st_size > 0 and (elsewhere / "tiny.idx").exists()
    assert (elsewhere / "tiny.classes.txt").read_text().split() == ["cat", "dog"]
    listing = run([str(bin_dir / "python"), "-m", "resnest_gluon", "--help"], elsewhere, env).stdout
    assert "download" in listing and "export" in listing and "info" in listing
    assert (bin_dir / "resnest-download").exists() and (bin_dir / "resnest-export").exists()
