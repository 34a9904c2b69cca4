"""The README's promises: its Python examples run, the scripts it names answer ``--help``, its links resolve.

A ```python block whose first line is ``# needs: ...`` (downloaded weights, data, an image) is not collected;
every other block must run and pass.
"""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

BLOCK_TIMEOUT = 240  # s; the slowest block exports a ResNeSt-14 to ONNX
HELP_TIMEOUT = 120  # s; importing mxnet takes ~2 s, more on a busy machine

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
_SCRIPT = re.compile(r"\b((?:scripts|tools)/[\w-]+\.py)\b")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return env


def python_blocks(text: str) -> list:
    """(line number, code) of every ```python block that needs nothing downloaded."""
    blocks = []
    for m in _FENCE.finditer(text):
        code = m.group(2)
        if m.group(1) != "python" or code.lstrip().startswith("# needs:"):
            continue
        blocks.append((text.count("\n", 0, m.start()) + 1, code))
    return blocks


def named_scripts(text: str) -> list:
    return sorted(set(_SCRIPT.findall(text)))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    text = _FENCE.sub("", path.read_text())
    return {slug(h) for h in _HEADING.findall(text)}


def relative_links(path: Path) -> list:
    text = _FENCE.sub("", path.read_text())
    links = [a or b for a, b in _LINK.findall(text)]
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


README_TEXT = README.read_text()
BLOCKS = python_blocks(README_TEXT)
SCRIPTS = named_scripts(README_TEXT)
# A planned name is checked as soon as its file exists; until then it is not collected.


def test_readme_has_runnable_examples():
    assert BLOCKS, "README.md has no runnable ```python block"


@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[f"line{n}" for n, _ in BLOCKS])
def test_python_block_runs(code, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def _help(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, "--help"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT,
    )


@pytest.fixture(scope="module")
def help_runs():
    """Every existing named script's ``--help``, started together: each spends ~2 s importing mxnet."""
    present = [s for s in SCRIPTS if (REPO / s).is_file()]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {s: pool.submit(_help, s) for s in present}
        yield futures


def test_readme_names_scripts():
    assert "scripts/train.py" in SCRIPTS and "tools/im2rec.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_answers_help(script, help_runs):
    assert (REPO / script).is_file(), f"README.md names {script}, which does not exist"
    done = help_runs[script].result()
    assert done.returncode == 0, f"{script} --help: exit {done.returncode}\n{done.stderr[-4000:]}"
    assert "usage" in done.stdout.lower(), f"{script} --help printed no usage:\n{done.stdout[-2000:]}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no file {path.relative_to(REPO) if REPO in path.parents else path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_slug():
    assert slug("Packing images: tools/im2rec.py") == "packing-images-toolsim2recpy"
    assert slug("What changes with `--ctx gpu`") == "what-changes-with---ctx-gpu"
    assert slug("The paper's table") == "the-papers-table"


def _train_commands(text: str) -> list:
    """The ``scripts/train.py ... --pretrained ...`` commands of a page's bash blocks, continuation lines
    joined and spaces collapsed."""
    found = []
    for m in _FENCE.finditer(text):
        if m.group(1) != "bash":
            continue
        joined = re.sub(r"\\\n\s*", " ", m.group(2))
        for line in joined.splitlines():
            if "scripts/train.py" in line and "--pretrained" in line:
                found.append(" ".join(line.split("#")[0].split()))
    return found


def test_readme_fine_tune_recipe_is_the_docs_recipe():
    """One fine-tuning recipe: the README's is docs/finetune.md's, flag for flag."""
    readme = _train_commands(README_TEXT)
    docs = _train_commands((REPO / "docs" / "finetune.md").read_text())
    assert readme and docs and readme[0] == docs[0], f"README: {readme[:1]}\ndocs/finetune.md: {docs[:1]}"
    for flag in ("--warmup-epochs 1", "--no-wd", "--min-area 0.25", "--backbone-lr-mult 0.1"):
        assert flag in readme[0]
