"""The static checks, as part of the test command: mypy strict over the whole project (`[tool.mypy]` in
pyproject.toml), ruff's lint and ruff's format. Each must report nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.processes import ROOT


@pytest.mark.parametrize(
    "check",
    [
        ["mypy", "--no-error-summary"],
        ["ruff", "check", "--quiet", "."],
        ["ruff", "format", "--check", "--quiet", "."],
    ],
    ids=["mypy", "ruff-check", "ruff-format"],
)
def test_finds_nothing(check: list[str]) -> None:
    checked = subprocess.run([sys.executable, "-m", *check], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
