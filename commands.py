"""The command lines the service shows its users (in error messages, on the web page, in the demo's hints): each
runs a script of this repository with the interpreter running now, written as it would be pasted in the folder this
process was started in (`.venv/bin/python starter.py ...` from a clone, absolute paths from elsewhere)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def command(script: str, *args: str) -> str:
    """The command line that runs `script` (`starter.py`, `worker.py`) of this repository with `args`."""
    python = _from_here(Path(sys.executable))
    if os.sep not in python:  # an interpreter in the folder itself: never a bare name the shell looks for on PATH
        python = f".{os.sep}{python}"
    return shlex.join([python, _from_here(ROOT / script), *args])


def _from_here(path: Path) -> str:
    """`path` relative to the working folder when it is under it, else absolute."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative
