"""core.context: one immutable run context per call, never process-wide state."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from medtools.core import context, report
from medtools.core.errors import InputError, UsageError
from medtools.core.io.finite import check_finite


def test_two_contexts_in_two_threads_each_see_their_own(capsys) -> None:
    barrier = threading.Barrier(2)
    seen: dict[str, tuple] = {}

    def run(name: str, ctx: context.RunContext) -> None:
        with context.use(ctx):
            barrier.wait(timeout=10)  # both contexts are active at the same time
            bad = np.array([1.0, np.nan])
            try:
                out = check_finite(bad, name)
                policy_result = float(out[1])
            except InputError:
                policy_result = "error"
            report.note_device(f"dev-{name}")
            barrier.wait(timeout=10)
            seen[name] = (context.current().quiet, context.current().nan_policy, policy_result, list(context.current().devices))

    threads = [
        threading.Thread(target=run, args=("a", context.RunContext(quiet=True, nan_policy="zero"))),
        threading.Thread(target=run, args=("b", context.RunContext(quiet=False, nan_policy="error"))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert seen["a"] == (True, "zero", 0.0, ["dev-a"])
    assert seen["b"] == (False, "error", "error", ["dev-b"])
    assert context.current() == context.RunContext()  # nothing leaked into this thread


def test_use_restores_the_previous_context_even_on_error() -> None:
    with pytest.raises(RuntimeError):
        with context.use(context.RunContext(insecure_permissions=True)):
            assert context.current().insecure_permissions
            raise RuntimeError("boom")
    assert not context.current().insecure_permissions


def test_from_options_maps_cli_names_and_checks_the_policy() -> None:
    ctx = context.RunContext.from_options({"json_output": True, "quiet": True, "nan_policy": "clip", "seed": 3, "model": "x"})
    assert (ctx.json, ctx.quiet, ctx.nan_policy, ctx.seed) == (True, True, "clip", 3)
    with pytest.raises(UsageError):
        context.RunContext.from_options({"nan_policy": "ignore"})


def test_a_command_leaves_no_setting_behind() -> None:
    """The CLI wrapper's context ends with the call: a quiet command does not silence the next caller."""

    from medtools.cliutil import Quiet, command

    @command
    def quiet_command(quiet: Quiet = False) -> int:
        assert context.current().quiet
        return 0

    quiet_command(quiet=True)
    assert context.current() == context.RunContext()
