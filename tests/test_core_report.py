"""core.report: per-item error collection, exit codes, stdout/stderr split, run record."""

from __future__ import annotations

import json

import pytest

from medtools.core import context, report
from medtools.core.errors import EXIT_TABLE, CheckpointError, InputError, IntegrityError, UsageError


def fail_on(bad: set[int], error: type[Exception] = InputError):
    def work(item: int):
        if item in bad:
            raise error(f"item {item} is bad")
        return "skipped" if item < 0 else "ok"

    return work


def test_exit_table_matches_design() -> None:
    assert sorted(EXIT_TABLE) == [0, 1, 2, 3, 4, 5, 129, 130, 143]  # 128+n: SIGHUP, SIGINT, SIGTERM (core/signals.py)
    assert (UsageError.exit_code, CheckpointError.exit_code, IntegrityError.exit_code, InputError.exit_code) == (2, 3, 4, 5)


@pytest.mark.parametrize(
    ("items", "bad", "error", "code"),
    [
        ([1, 2, 3], set(), InputError, 0),
        ([1, 2, 3], {2}, InputError, 1),  # some failed, the others were written
        ([-1, 2], {2}, InputError, 1),  # a skipped (already done) item counts as usable
        ([1, 2], {1, 2}, InputError, 5),  # nothing usable
        ([1, 2], {1, 2}, OSError, 5),
        ([1, 2], {1, 2}, CheckpointError, 3),  # every checkpoint bad
        ([1, 2], {1, 2}, IntegrityError, 4),  # every file failed authentication
    ],
)
def test_run_items_exit_codes(items, bad, error, code, capsys) -> None:
    outcome = report.run_items(items, fail_on(bad, error), name=lambda i: f"file{i}")
    assert outcome.exit_code == code
    assert outcome.failed == len(bad)
    err = capsys.readouterr().err
    for item in bad:  # each bad item: one line on stderr with its name and reason
        assert f"error: file{item}: " in err and f"item {item} is bad" in err


def test_mixed_failure_kinds_with_nothing_usable_is_5() -> None:
    def work(item: int):
        raise (CheckpointError if item == 1 else InputError)("bad")

    assert report.run_items([1, 2], work).exit_code == 5


def test_usage_error_and_broken_pipe_stop_the_batch() -> None:
    seen = []

    def work(item: int):
        seen.append(item)
        if item == 2:
            raise UsageError("output would overwrite the input")

    with pytest.raises(UsageError, match="^2: output would overwrite"):
        report.run_items([1, 2, 3], work)
    assert seen == [1, 2]

    def pipe(item: int):
        raise BrokenPipeError

    with pytest.raises(BrokenPipeError):
        report.run_items([1, 2], pipe)


def test_keyboard_interrupt_is_not_swallowed() -> None:
    def work(item: int):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        report.run_items([1], work)


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
