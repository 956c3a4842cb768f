"""core.report: per-item error collection, exit codes, stdout/stderr split, run record."""

from __future__ import annotations

import json

import pytest

from medtools.core import context, report
from medtools.core.errors import EXIT_TABLE, CheckpointError, InputError, IntegrityError, UsageError


def test_exit_table_matches_design() -> None:
    assert sorted(EXIT_TABLE) == [0, 1, 2, 3, 4, 5, 6, 7, 129, 130, 143]  # 128+n: SIGHUP, SIGINT, SIGTERM (core/signals.py)
    assert (UsageError.exit_code, CheckpointError.exit_code, IntegrityError.exit_code, InputError.exit_code) == (2, 3, 4, 5)


def test_stdout_for_machines_stderr_for_humans(capsys) -> None:
    report.emit_path("out/a.nii.gz")
    report.emit_jsonl({"a": 1})
    report.log("hello human")
    report.warn("careful")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["out/a.nii.gz", '{"a": 1}']
    assert err.splitlines() == ["hello human", "warning: careful"]
    with context.use(context.RunContext(quiet=True)):
        report.log("hidden")
        report.warn("still shown")
    report.log("shown again")  # the quiet context ended with its block
    assert capsys.readouterr().err.splitlines() == ["warning: still shown", "shown again"]


def test_progress_is_silent_when_stderr_is_not_a_tty(capsys) -> None:
    assert list(report.progress(range(3), total=3, description="x")) == [0, 1, 2]
    assert capsys.readouterr() == ("", "")


def test_run_record_carries_provenance(tmp_path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    record = report.RunRecord(device="cpu", seed=3)
    record.add_checkpoint(model)
    data = json.loads(report.to_json(record.as_dict()))
    assert data["device"] == "cpu" and data["seed"] == 3
    assert data["checkpoints"] == {str(model): report.sha256_file(model)}
    assert data["medtools"] and data["wall_s"] >= 0
    assert len(data["checkpoints"][str(model)]) == 64


def test_json_handles_numpy_and_paths() -> None:
    import numpy as np
    from pathlib import Path

    text = report.to_json({"p": Path("a/b"), "x": np.float32(0.5), "v": np.arange(3)}, indent=None)
    assert json.loads(text) == {"p": "a/b", "x": 0.5, "v": [0, 1, 2]}
