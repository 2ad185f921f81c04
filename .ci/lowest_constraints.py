"""Print pip constraints pinning every dependency of the companion at its lower bound.

    python .ci/lowest_constraints.py > lowest.txt
    pip install -c lowest.txt ".[test]"

Each ``name>=X`` of ``[project] dependencies`` in pyproject.toml becomes ``name==X``
(``jaxlib`` follows ``jax``: they are released together); the test tools stay free.
A dependency without a lower bound is an error: every range must be tested at its low
end. This is pip's equivalent of ``uv pip install --resolution lowest-direct``.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lowest() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)\s*(,.*)?", dep)
        if m is None:
            raise SystemExit(f"error: {dep!r} has no lower bound (name>=X)")
        pins.append(f"{m.group(1)}=={m.group(2)}")
        if m.group(1) == "jax":
            pins.append(f"jaxlib=={m.group(2)}")
    return pins


if __name__ == "__main__":
    print("\n".join(lowest()))
    sys.exit(0)
