"""Keep the hidden tests' passes out of the reader's real progress file."""

import pytest


@pytest.fixture(autouse=True)
def _private_progress_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_PROGRESS_FILE", str(tmp_path / "progress.json"))
