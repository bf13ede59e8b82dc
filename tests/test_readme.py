"""The README's Python example runs as written, in a fresh interpreter, and says what the README says it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    """The first ```python block under the README's "## Python" heading."""
    text = README.read_text()
    section = text.split("\n## Python\n", 1)
    assert len(section) == 2, "README has no '## Python' section"
    match = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert match, "README's Python section has no ```python block"
    return match.group(1)


def test_the_example_uses_the_public_api_only() -> None:
    code = python_example()
    assert "import facelab" in code
    assert "facelab.load(" in code and "facelab.Gallery(" in code
    # nothing private or deep: the example is what a newcomer copies
    assert not re.search(r"from facelab\.(inference|serving|engine|runs)", code)


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", python_example()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    same, score, _threshold = lines[0].split()
    assert same == "True" and 0.0 < float(score) <= 1.0  # two photos of the same ORL person
    assert lines[1] == "(2, 128)"
    assert lines[2].split()[0] == "s2"  # s2's unenrolled photo is named s2
    assert (tmp_path / "people.db").is_file()
