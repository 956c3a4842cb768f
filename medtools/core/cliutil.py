"""Moved to ``medtools.cliutil`` (core knows no command line). Kept only so that code not yet
updated keeps importing; nothing in core imports typer through this module at import time."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import medtools.cliutil

    return getattr(medtools.cliutil, name)
