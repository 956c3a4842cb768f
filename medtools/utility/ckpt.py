"""``ckpt strip``: a copy of a checkpoint that names no one (``core.ids``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def strip_job(source: Path, output: Path) -> dict[str, Any]:
    """Write ``output`` without ``source``'s identifying metadata (tensors bit-identical) and
    report it: OUTPUT on stdout (``--json``: what was removed and what the copy still reveals)."""
    from medtools.core import report
    from medtools.core.ids import strip_checkpoint, summary

    result = strip_checkpoint(source, output)
    removed = ", ".join(result["removed"]) or "nothing"
    report.log(f"ckpt strip: removed {removed}; {result['paths_replaced']} path(s) replaced; the copy reveals: {summary(result['reveals'])}")
    report.emit_result(result, lambda r: r["output"])
    return result
