"""The README stays true: its tour runs verbatim, and `make demo` serves the UI."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- tour -->\s*```bash\n(.*?)```\s*<!-- /tour -->", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


@pytest.mark.weights
def test_readme_tour_runs(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    commands = tour_commands()
    assert [c.split()[1] for c in commands] == ["scenes", "scenes", "train", "vqa", "eval"]
    for command in commands:
        out = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"{command}\n{out.stderr[-2000:]}"
    assert '"overall"' in out.stdout
    assert (tmp_path / "tour" / "run" / "model.safetensors").is_file()
    assert len((tmp_path / "tour" / "pred.jsonl").read_text().splitlines()) == 4


@pytest.mark.weights
def test_make_demo_serves_the_ui():
    proc = subprocess.Popen(["make", "demo"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:7860/", timeout=5) as r:
                    assert r.status == 200 and "gradio" in r.read().decode().lower()
                    return
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(1)
        pytest.fail("make demo did not serve http://127.0.0.1:7860 in time")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def doc_pages() -> list[Path]:
    """The README and the pages under docs/."""
    return [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]


def documented_commands() -> list[str]:
    """Every `cogvlm-lite` / `torchrun ... -m cogvlm_lite` line of the bash blocks of the README
    and of docs/*.md."""
    text = "\n".join(page.read_text() for page in doc_pages())
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if "cogvlm-lite " in line or "-m cogvlm_lite " in line:
                commands.append(line)
    return commands


def test_every_documented_command_has_valid_options():
    from cogvlm_lite.cli import build_parser

    commands = documented_commands()
    assert len(commands) >= 40
    for command in commands:
        words = shlex.split(command)
        start = words.index("cogvlm-lite") if "cogvlm-lite" in words else words.index("cogvlm_lite")
        parser, _ = build_parser()
        parser.parse_args(words[start + 1 :])  # exits (fails the test) on a bad option


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.*)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_local_link_of_the_docs_exists():
    links = [(page, target, anchor) for page in doc_pages()
             for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text())
             if not re.match(r"[a-z]+:", target)]
    assert any(target == "docs/default-checkpoint.md" for _, target, _ in links)
    assert any(anchor for _, _, anchor in links)
    missing = [(page.name, target) for page, target, _ in links if not (page.parent / target).exists()]
    assert not missing, missing
    unknown = [(page.name, target, anchor) for page, target, anchor in links
               if anchor and anchor not in heading_anchors(page.parent / target if target else page)]
    assert not unknown, unknown


def test_layout_names_every_module():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    modules = {p.name for p in (ROOT / "cogvlm_lite").glob("*.py")} - {"__init__.py", "__main__.py"}
    assert modules and not {m for m in modules if f"`{m}`" not in layout}


def test_every_imported_package_is_declared():
    """What the code imports is installed by `pyproject.toml` itself, not by luck through another
    package's dependencies (`llama_cpp`, a benchmark peer, is optional and said so)."""
    import ast
    import importlib.metadata as metadata

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    declared = {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in wanted}
    modules = set()
    for path in [*ROOT.glob("cogvlm_lite/*.py"), ROOT / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules.add(node.module.split(".")[0])
    modules -= {*sys.stdlib_module_names, "cogvlm_lite", "llama_cpp"}
    assert {"torch", "PIL", "scipy", "fastapi"} <= modules
    distributions = metadata.packages_distributions()
    undeclared = {m: distributions.get(m) for m in modules
                  if not {d.lower().replace("_", "-") for d in distributions.get(m, [])} & declared}
    assert not undeclared, undeclared
