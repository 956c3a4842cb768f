"""Adding a command or a model kind touches one family's files.

The test copies the package, makes the two toy additions a newcomer would make to the
collab family (a command in commands.py, a model kind in models.py), and checks that the
copy's CLI runs the command, that `info --kinds` lists the kind, and
that no other file changed (`git diff --no-index` of the two trees names only those two and
the new job module beside them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOY_COMMAND = '''

@command
def toy_count(inputs: Inputs, json_output: Json = False, quiet: Quiet = False) -> int:
    """Count the supported files under INPUTS (a newcomer's toy command)."""
    from medtools.collab.toy import count_job

    return count_job(inputs)
'''

TOY_KIND = '''

register_kind(
    "toy-net",
    family="collab",
    builder="torch.nn:Linear",
    description="a newcomer's toy kind",
    builder_keys=("in_features", "out_features"),
    task="none",
    channels_key=None,
)
'''

TOY_MODULE = '''"""A newcomer's toy job."""

from medtools.core import report


def count_job(inputs):
    from medtools.core.inputs import expand_inputs

    items = expand_inputs(inputs)
    report.emit_result({"files": len(items)}, lambda r: [str(r["files"])])
    return 0
'''


def test_a_new_command_and_kind_touch_one_familys_files(tmp_path: Path, brain_phantom: Path) -> None:
    copy = tmp_path / "medtools"
    shutil.copytree(ROOT / "medtools", copy, ignore=shutil.ignore_patterns("__pycache__"))
    commands = copy / "collab" / "commands.py"
    text = commands.read_text()
    text = text.replace('    app.command("collab-attack")(collab_attack)', '    app.command("collab-attack")(collab_attack)\n    app.command("toy-count")(toy_count)')
    commands.write_text(text + TOY_COMMAND)
    (copy / "collab" / "models.py").write_text((copy / "collab" / "models.py").read_text() + TOY_KIND)
    (copy / "collab" / "toy.py").write_text(TOY_MODULE)

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MEDTOOLS_DEVICE": "cpu"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "medtools", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # noqa: E731
    counted = run("toy-count", str(brain_phantom), "--json")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["files"] == len([p for p in brain_phantom.rglob("*.nii.gz")])
    kinds = run("info", "--kinds", "--json")
    assert kinds.returncode == 0, kinds.stderr
    assert {"kind": "toy-net", "family": "collab"}.items() <= next(k for k in json.loads(kinds.stdout) if k["kind"] == "toy-net").items()

    diff = subprocess.run(["git", "diff", "--no-index", "--name-status", str(ROOT / "medtools"), str(copy)], capture_output=True, text=True)
    touched = sorted({line.split("\t")[-1].replace(str(copy), "medtools").replace(str(ROOT / "medtools"), "medtools") for line in diff.stdout.splitlines() if "__pycache__" not in line})
    assert touched == ["medtools/collab/commands.py", "medtools/collab/models.py", "medtools/collab/toy.py"], touched
