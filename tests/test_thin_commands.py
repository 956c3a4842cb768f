"""The command layer only parses flags and calls one function.

Every command body in every family's commands.py (found by walking the package, so a new
family or command is covered without editing this test) may validate flags (`if ...: raise`),
but has no loop, comprehension, other branch or try: that logic belongs in the family's
functions, where the API, serve and tests reach it too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medtools"
LOGIC = (ast.For, ast.While, ast.AsyncFor, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.IfExp, ast.Try, ast.With, ast.Match)


def command_bodies() -> list[tuple[str, ast.FunctionDef]]:
    found = []
    for path in sorted(PACKAGE.rglob("commands.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any("command" in ast.unparse(d) for d in node.decorator_list):
                found.append((f"{path.relative_to(PACKAGE.parent)}:{node.name}", node))
    return found


def is_flag_validation(node: ast.If) -> bool:
    """`if <condition>: raise ...` with no else: refusing a flag combination."""
    return not node.orelse and all(isinstance(statement, ast.Raise) for statement in node.body)


def logic_in(function: ast.FunctionDef) -> list[str]:
    problems = []
    for node in ast.walk(function):
        if isinstance(node, LOGIC):
            problems.append(f"{type(node).__name__} at line {node.lineno}")
        elif isinstance(node, ast.If) and not is_flag_validation(node):
            problems.append(f"If at line {node.lineno} (not `if ...: raise`)")
    return problems


def test_the_walk_finds_every_family() -> None:
    families = {name.split(":")[0].split("/")[1] for name, _ in command_bodies()}
    assert {"brain", "synth", "secure", "cls", "index", "collab", "utility", "serve"} <= families


@pytest.mark.parametrize(("name", "function"), command_bodies(), ids=[name for name, _ in command_bodies()])
def test_a_command_body_has_no_logic(name: str, function: ast.FunctionDef) -> None:
    assert logic_in(function) == [], f"{name}: move this into the family's function"


def test_the_check_catches_a_loop_and_a_branch() -> None:
    """The rule itself: a toy command with a loop and a non-raising branch fails it."""
    toy = ast.parse(
        "@command\n"
        "def toy(inputs, json_output=False):\n"
        "    if not inputs:\n        raise UsageError('x')\n"
        "    for item in inputs:\n        print(item)\n"
        "    if json_output:\n        emit()\n"
    ).body[0]
    assert [p.split()[0] for p in logic_in(toy)] == ["For", "If"]
