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
