"""Check an installed companion wheel: run with the venv's python from the repository
root (the release workflow and tests/test_notebooks.py do). It imports, reports the
version of pyproject.toml, and carries every checkpoint of companion/checkpoints/."""

import importlib.metadata
import sys
import tomllib
from importlib.resources import files
from pathlib import Path

import companion

root = Path.cwd()
version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
installed = importlib.metadata.version("score-sde-companion")
problems = []
if not (installed == companion.__version__ == version):
    problems.append(f"versions differ: pyproject {version}, installed {installed}, companion {companion.__version__}")
if Path(companion.__file__).resolve().is_relative_to(root):
    problems.append(f"companion was imported from the checkout ({companion.__file__}), not from the wheel")
shipped = {p.name for p in files("companion").joinpath("checkpoints").iterdir() if p.name.endswith(".msgpack")}
wanted = {p.name for p in (root / "companion" / "checkpoints").glob("*.msgpack")}
if wanted - shipped:
    problems.append(f"checkpoints missing from the wheel: {sorted(wanted - shipped)}")
for problem in problems:
    print(problem, file=sys.stderr)
print(f"score-sde-companion {installed}: {len(shipped)} checkpoints, {'FAILED' if problems else 'ok'}")
sys.exit(1 if problems else 0)
