"""Where symbol databases live: one file per kernel release in the cache."""

from __future__ import annotations

import os
from pathlib import Path

from klpkit.errors import InputError


def cache_dir() -> Path:
    base = os.environ.get("KLPKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "klpkit"
    )
    return Path(base) / "symbols"


def default_db_path(release: str | None = None, db: str | os.PathLike | None = None) -> Path:
    """``db`` if given, else ``$KLPKIT_SYMBOLS_DB``, else the cache file of ``release``."""
    if db:
        return Path(db)
    env = os.environ.get("KLPKIT_SYMBOLS_DB")
    if env:
        return Path(env)
    if not release:
        raise InputError(
            "no symbol database given: use --db PATH, KLPKIT_SYMBOLS_DB or --release R"
        )
    if "/" in release or "\0" in release or release in (".", ".."):
        raise InputError(f"bad kernel release {release!r}")
    return cache_dir() / f"{release}.sqlite"
