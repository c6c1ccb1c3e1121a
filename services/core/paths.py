"""Where the embedded default's files and the repository's conf/ and migrations/ live."""
from __future__ import annotations

import os
from pathlib import Path


def llc_home() -> Path:
    """Root of the embedded default's files (`LLC_HOME`, default ~/.llc): the one place it is read."""
    return Path(os.environ.get("LLC_HOME", Path.home() / ".llc")).expanduser().resolve()


def project_root() -> Path:
    """The repository root (conf/ and migrations/ live there)."""
    return Path(__file__).resolve().parents[2]
