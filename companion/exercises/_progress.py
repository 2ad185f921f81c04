"""Where the reader's passed exercises are kept across kernels: a small JSON file.

Storage only; :func:`companion.exercises.progress` reads it with the registry of
exercises, and :func:`companion.exercises.check` records each pass.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

__all__ = ["PROGRESS_ENV", "progress_path", "read_passed", "record_pass"]

#: Environment variable naming the progress file (a path); overrides the default.
PROGRESS_ENV = "COMPANION_PROGRESS_FILE"


def progress_path() -> Path:
    """Where the passed exercises are kept: ``$COMPANION_PROGRESS_FILE`` if set, else
    ``progress.json`` in the user's data directory (``$XDG_DATA_HOME`` or
    ``~/.local/share`` on Linux and Colab, ``~/Library/Application Support`` on macOS,
    ``%APPDATA%`` on Windows), in a folder ``score-sde-course``."""
    override = os.environ.get(PROGRESS_ENV)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform.startswith("win"):
        base = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "score-sde-course" / "progress.json"


def read_passed() -> dict[str, str]:
    """The passed exercises and when, from :func:`progress_path`."""
    # A missing, unreadable or corrupt file is no progress, never an error.
    try:
        data = json.loads(progress_path().read_text(encoding="utf-8"))
        passed = data["passed"]
        return {str(k): str(v) for k, v in passed.items()}
    except Exception:
        return {}


def record_pass(name: str) -> None:
    """Add ``name`` to the progress file (atomically; best effort)."""
    # Best effort: a read-only home or a full disk must not break a notebook.
    try:
        passed = read_passed()
        if name in passed:
            return
        passed[name] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        )
        path = progress_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "passed": passed}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except Exception:
        pass
