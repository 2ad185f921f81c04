"""Installing the companion keeps the JAX that an environment already has (issue 18).

A hosted notebook (Colab) preinstalls a recent jax, jaxlib and their CUDA plugin; the
install cell must not downgrade or replace them. Here the companion's wheel is
resolved by pip, without installing anything (``pip install --dry-run --report``,
``--no-index``: only what is installed can satisfy it), against the environment the
tests run in, whose jax plays the preinstalled one: no jax package may be in the plan.
In the compat job ``newest`` (``bash .ci/compat newest``) that jax is the newest release.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow
NAME = "score-sde-companion-install-check"


def _run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    shutil.copy(ROOT / "README.md", src / "README.md")
    # Another distribution name, same dependencies: the editable install of the
    # companion in this environment must not make pip skip the resolution.
    text = (ROOT / "pyproject.toml").read_text()
    assert 'name = "score-sde-companion"' in text
    (src / "pyproject.toml").write_text(text.replace('name = "score-sde-companion"', f'name = "{NAME}"', 1))
    shutil.copytree(ROOT / "companion", src / "companion", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(src)])
    (path,) = (tmp / "dist").glob(f"{NAME.replace('-', '_')}-*.whl")
    return path


def _plan(requirement: str, tmp_path: Path) -> list[dict]:
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    _run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--disable-pip-version-check",
          "--quiet", "--report", str(report), requirement], env=env)
    return json.loads(report.read_text())["install"]


def _is_jax(name: str) -> bool:
    name = name.lower().replace("_", "-")
    return name in ("jax", "jaxlib") or name.startswith(("jax-cuda", "jax-rocm", "jax-plugin"))


def test_installing_the_wheel_changes_no_jax_package(wheel, tmp_path):
    installed = {d.metadata["Name"]: d.version for d in metadata.distributions() if _is_jax(d.metadata["Name"])}
    assert "jax" in installed and "jaxlib" in installed, installed
    plan = _plan(str(wheel), tmp_path)
    names = [item["metadata"]["name"] for item in plan]
    assert NAME in [n.replace("_", "-") for n in names], names  # pip did resolve the wheel
    assert not [n for n in names if _is_jax(n)], f"installing the companion would change {names} (have {installed})"


def test_the_wheel_admits_the_installed_jax(wheel):
    """The same fact from the wheel's metadata: its jax range contains the installed jax."""
    from packaging.requirements import Requirement

    with __import__("zipfile").ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    (jax_req,) = [Requirement(r) for r in requires if Requirement(r).name == "jax"]
    assert jax_req.specifier.contains(metadata.version("jax"), prereleases=True), (str(jax_req), metadata.version("jax"))
    # no upper bound: a newer jax (as a notebook service may have) is admitted too
    assert not [s for s in jax_req.specifier if s.operator in ("<", "<=", "==", "~=")], str(jax_req)
