"""The commands' doors: scripts/ and tools/ files, ``python -m resnest_gluon COMMAND`` and
``resnest_gluon.cli.run`` reach the same code, set the threads first, and print a user's mistake as one
line."""

import ast
import os
import subprocess
import sys

import pytest

from resnest_gluon import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def door(name):
    folder = "tools" if name in ("im2rec", "rec-check") else "scripts"
    return os.path.join(REPO, folder, name.replace("-", "_") + ".py")


def run(cmd, **kw):
    return subprocess.run(cmd, env=cli.child_env(), capture_output=True, text=True, timeout=120, **kw)


def test_every_command_has_a_module_and_a_thin_door():
    for name in cli.COMMANDS:
        module = os.path.join(REPO, "resnest_gluon", "cli", name.replace("-", "_") + ".py")
        assert os.path.isfile(module), module
        tree = ast.parse(open(module).read())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), module
        text = open(door(name)).read()
        assert f'run("{name}")' in text and len(text.splitlines()) <= 20, door(name)


def test_console_scripts_name_every_command():
    scripts = cli.console_scripts()
    assert "resnest-train = resnest_gluon.console:train" in scripts
    assert "resnest-rec-check = resnest_gluon.console:rec_check" in scripts
    assert len(scripts) == len(cli.COMMANDS)
    from resnest_gluon import console

    assert all(callable(getattr(console, n.replace("-", "_"))) for n in cli.COMMANDS)


@pytest.mark.parametrize("name", ["train", "im2rec", "verify"])
def test_three_doors_give_the_same_help(name, tmp_path):
    by_file = run([sys.executable, door(name), "--help"], cwd=tmp_path)
    by_module = run([sys.executable, "-m", "resnest_gluon", name, "--help"], cwd=tmp_path)
    assert by_file.returncode == 0 and by_module.returncode == 0, by_file.stderr + by_module.stderr
    # the same description and options below the usage lines (argparse names the program differently)
    assert (
        by_file.stdout[by_file.stdout.index("\n\n") :] == by_module.stdout[by_module.stdout.index("\n\n") :]
    )


def test_packers_start_without_mxnet():
    code = "import sys; from resnest_gluon.cli import im2rec, rec_check; print('mxnet' in sys.modules)"
    assert run([sys.executable, "-c", code]).stdout.strip() == "False"


def test_threads_set_before_mxnet_loads(tmp_path):
    # train reserves --data-threads cores of its share; 2 cores minus 1 leaves 1 (at least 1 anywhere)
    code = (
        "import os, sys\n"
        "from resnest_gluon import cli, threads\n"
        "threads.usable_cores = lambda *a, **k: 3\n"
        "sys.modules['resnest_gluon.cli.train'] = type(sys)('stub')\n"
        "sys.modules['resnest_gluon.cli.train'].main = lambda argv: print(os.environ['OMP_NUM_THREADS'])\n"
        "cli.run('train', ['--data-threads', '1'])\n"
    )
    env = cli.child_env()
    env.pop("OMP_NUM_THREADS", None)
    env.pop("MXNET_OMP_MAX_THREADS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "2", done.stderr


def test_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    argv = [sys.executable, door("train"), "--rec-train", str(tmp_path / "none.rec"), "--ctx", "cpu"]
    argv += ["--save-dir", str(tmp_path / "run")]
    done = run(argv)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error (rank 0): training file")
    assert "Traceback" not in done.stderr
    env = dict(cli.child_env(), RESNEST_GLUON_DEBUG="1")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "TrainingError" in done.stderr


def test_unknown_command_and_listing():
    done = run([sys.executable, "-m", "resnest_gluon", "trian"])
    assert done.returncode == 2 and "unknown command 'trian'" in done.stderr
    listing = run([sys.executable, "-m", "resnest_gluon", "--help"]).stdout
    assert all(name in listing for name in cli.COMMANDS)


def test_model_table_has_gmacs_and_info_gives_a_card(monkeypatch, capsys, tmp_path):
    from resnest_gluon import __main__ as entry
    from resnest_gluon.cli import info
    from resnest_gluon.models import zoo

    row = info.model_row("resnest50")
    # the paper's 27.5M parameters and 5.4 GFLOPs (multiply-adds) at 224 px
    assert row["params"] == pytest.approx(27.5e6, rel=2e-3) and row["gmacs"] == pytest.approx(5.37, abs=0.01)
    monkeypatch.setattr(zoo, "list_models", lambda: ["resnest14", "resnetd50"])
    assert entry.main([]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split("|")[1:-1] == [
        " model                  ",
        " crop ",
        " params (M) ",
        " GMACs ",
        " published top-1 ",
    ]
    assert table[2].split("|")[1:-1] == [
        " resnest14              ",
        "  224 ",
        "       10.6 ",
        "  2.75 ",
        "           75.75 ",
    ]
    assert table[3].rstrip().endswith("- |")  # resnetd50: nothing published
    monkeypatch.setenv("RESNEST_GLUON_HOME", str(tmp_path))
    assert cli.run("info", ["resnest14"]) == 0
    card = capsys.readouterr().out
    for expected in ("75.75 %", "224 px centre crop", "10.6 M", "2.75", "resnest14-7e0b0cae.params",
                     "7e0b0cae2fd7e9084d1e498b858af1429a6eb1cb", "gluon/models/resnest14-7e0b0cae.zip",
                     "Apache-2.0", "no: resnest-download resnest14"):  # fmt: skip
        assert expected in card, expected
    assert cli.run("info", ["resnetd50", "--json"]) == 0
    assert '"file": null' in capsys.readouterr().out


@pytest.mark.parametrize(
    "name",
    ["predict", "download", "export", "info", "quantize", "convert-weights", "benchmark", "prepare-imagenet",
     "average-checkpoints"],
)  # fmt: skip
def test_help_in_groups_each_default_once_required_marked(name, capsys):
    import re

    module = cli._module(name)
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text and not re.search(r"\(default: [^)]*\) \(default:", text)
    assert "--debug" in text and "--threads" not in text and "--output " not in text  # old spellings hidden
    if name not in ("info", "convert-weights", "average-checkpoints"):  # a few flags need no groups
        assert " output: " in text, text
    required = {"quantize": "--out-prefix", "convert-weights": "--out", "export": "--format"}
    if name in required:  # the flag's help (its first mention after the usage) says it is required
        entry = text.split(" options: ", 1)[1].split(required[name] + " ", 1)[1]
        assert "(required)" in entry.split(" --")[0], entry


def test_old_spellings_still_work():
    from resnest_gluon.cli import convert_weights, predict, prepare_imagenet, quantize

    assert predict.parse_args(["x.jpg", "--run", "r", "--threads", "2"]).data_threads == 2
    assert predict.parse_args(["x.jpg", "--run", "r", "--no-cuda"]).ctx == "cpu"
    argv = ["--model", "resnest14", "--params", "p", "--rec-calib", "c", "--rec-val", "v"]
    assert quantize.parse_args(argv + ["--out", "o"]).out_prefix == "o"
    assert convert_weights.parse_args(["--model", "resnest14", "--input", "i", "--output", "o"]).out == "o"
    assert prepare_imagenet.parse_args.__module__  # its parser checks the archives exist: see its own tests
