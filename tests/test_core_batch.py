"""core.batch: the one per-item driver — item errors, exit codes, workers, skips, emits."""

from __future__ import annotations

import threading
import time

import pytest

from medtools.core import batch, context
from medtools.core.errors import CheckpointError, InputError, IntegrityError, UsageError


def fail_on(bad: set[int], error: type[Exception] = InputError):
    def work(item: int):
        if item in bad:
            raise error(f"item {item} is bad")
        return "skipped" if item < 0 else "ok"

    return work


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
    outcome = batch.run_items(items, fail_on(bad, error), name=lambda i: f"file{i}")
    assert outcome.exit_code == code
    assert outcome.failed == len(bad)
    err = capsys.readouterr().err
    for item in bad:  # each bad item: one line on stderr with its name and reason
        assert f"error: file{item}: " in err and f"item {item} is bad" in err


def test_mixed_failure_kinds_with_nothing_usable_is_5() -> None:
    def work(item: int):
        raise (CheckpointError if item == 1 else InputError)("bad")

    assert batch.run_items([1, 2], work).exit_code == 5


def test_usage_error_and_broken_pipe_stop_the_batch() -> None:
    seen = []

    def work(item: int):
        seen.append(item)
        if item == 2:
            raise UsageError("output would overwrite the input")

    with pytest.raises(UsageError, match="^2: output would overwrite"):
        batch.run_items([1, 2, 3], work)
    assert seen == [1, 2]

    def pipe(item: int):
        raise BrokenPipeError

    with pytest.raises(BrokenPipeError):
        batch.run_items([1, 2], pipe)


def test_keyboard_interrupt_is_not_swallowed() -> None:
    def work(item: int):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.run_items([1], work)




def test_any_integrity_failure_is_exit_4_even_beside_successes() -> None:
    """Tampering is never reported as a partial success."""
    assert batch.run_items([1, 2, 3], fail_on({2}, IntegrityError)).exit_code == 4


def test_a_library_memory_error_is_an_item_error_with_a_clear_message(capsys) -> None:
    def work(item: int):
        if item == 1:
            raise MemoryError()
        return item

    outcome = batch.run_items([1, 2], work)
    assert outcome.exit_code == 1
    assert "1: not enough memory" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 3])
def test_workers_keep_input_order_and_the_callers_context(workers) -> None:
    threads = set()

    def work(item: int):
        threads.add(threading.current_thread().name)
        time.sleep(0.02 * (5 - item % 5))  # later items finish first
        if item == 4:
            raise InputError("bad four")
        return {"item": item, "quiet": context.current().quiet}

    emitted: list = []
    with context.use(context.RunContext(quiet=True)):
        outcome = batch.run_items(range(10), work, emit=emitted.append, workers=workers)
    assert [r["item"] for r in emitted] == [i for i in range(10) if i != 4]
    assert all(r["quiet"] for r in emitted)  # worker threads run in the caller's run context
    assert (outcome.ok, outcome.failed, outcome.exit_code) == (9, 1, 1)
    assert (len(threads) > 1) == (workers > 1)


def test_run_batches_loads_per_item_and_fails_one_batch_together(capsys) -> None:
    def load(item: int):
        if item == 0:
            return batch.SKIPPED
        if item == 1:
            raise InputError("unreadable")
        return item * 10

    def work(pairs):
        if any(value == 50 for _, value in pairs):
            raise RuntimeError("batch exploded")
        for item, value in pairs:
            yield item, (IntegrityError("tampered") if value == 20 else value)

    emitted: list = []
    outcome = batch.run_batches(list(range(7)), load, work, batch_size=2, emit=emitted.append)
    # batches: (2,3) → 20 fails integrity, 30 ok; (4,5) → exploded; (6) → 60 ok
    assert emitted == [30, 60]
    assert (outcome.skipped, outcome.ok, outcome.failed) == (1, 2, 4)
    assert outcome.exit_code == 4
    err = capsys.readouterr().err
    assert "1: unreadable" in err and "4: RuntimeError: batch exploded" in err


def test_emitter_prints_paths_or_json_lines_by_context(capsys) -> None:
    emit = batch.emitter()
    emit({"output": "a.png", "x": 1})
    with context.use(context.RunContext(json=True)):
        emit({"output": "b.png", "x": 2})
    emit({"outputs": ["c.png", "d.png"]})
    assert capsys.readouterr().out == 'a.png\n{"output": "b.png", "x": 2}\nc.png\nd.png\n'
