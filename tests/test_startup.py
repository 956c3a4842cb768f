"""Start-up: `medtools --help` loads no family, commands load only their own, the table is fresh.

Every CLI test pays the start-up of a `medtools` process, so these checks guard the whole
suite's time as well as a script's that calls medtools once per file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

PACKAGE = ROOT / "medtools"
SHARED = {"core", "nets", "imagecipher"}
FAMILIES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and p.name not in SHARED)
HEAVY = ("torch", "numpy", "timm", "diffusers", "segmentation_models_pytorch", "tenseal", "fastapi", "rich", "nibabel", "pydicom")

# run the CLI in this interpreter, then write what it imported (and its exit code) to argv[1]
RUNNER = """
import json, sys
from medtools.cli import app
code = 0
try:
    app(sys.argv[2:], prog_name="medtools")
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, "modules": sorted(sys.modules)}, handle)
"""


def run_in_process(report: Path, *args: str) -> tuple[int, set[str], subprocess.CompletedProcess]:
    env = {**os.environ, "MEDTOOLS_DEVICE": "cpu", "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(report), *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert report.is_file(), proc.stderr
    data = json.loads(report.read_text())
    return data["code"], set(data["modules"]), proc


def families_loaded(modules: set[str]) -> set[str]:
    return {m.split(".")[1] for m in modules if m.startswith("medtools.") and m.split(".")[1] in FAMILIES}


def test_command_table_is_fresh() -> None:
    from medtools._commands import COMMANDS
    from medtools.cli import command_table

    assert COMMANDS == command_table(), "medtools/_commands.py is stale: run `make completions` and commit it"


def test_help_lists_every_command_and_loads_no_family(tmp_path: Path) -> None:
    from medtools._commands import COMMANDS

    code, modules, proc = run_in_process(tmp_path / "r.json", "--help")
    assert code == 0, proc.stderr
    assert families_loaded(modules) == set(), "medtools --help imported a family"
    assert not [m for m in HEAVY if m in modules]
    listed = proc.stdout.split("Commands:")[1]
    for name, (_, help_text, _) in COMMANDS.items():
        line = next((l for l in listed.splitlines() if l.split()[:1] == [name]), None)
        assert line is not None, f"{name} missing from --help"
        assert help_text.split()[0] in line  # its one-line help beside it
    # the lazy listing renders exactly as the one built from every loaded command
    code = (
        "import typer.main; from typer import _click; from medtools.cli import app; "
        "g = typer.main.get_command(app); g.commands; print(g.get_help(_click.Context(g, info_name='medtools', **g.context_settings)))"
    )
    eager = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "100"}, timeout=300)
    assert eager.returncode == 0, eager.stderr
    assert eager.stdout.strip() == proc.stdout.strip()


def test_help_costs_little_cpu() -> None:
    """CPU time (not wall: the machine is shared) of a whole `medtools --help` process."""
    best = 9.0
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-m", "medtools", "--help"], stdout=subprocess.DEVNULL, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        best = min(best, usage.ru_utime + usage.ru_stime)
    assert best < 0.3, f"medtools --help used {best:.2f} s of CPU"


def test_a_command_missing_from_a_stale_table_is_still_found(monkeypatch) -> None:
    import typer.main

    import medtools.cli as cli

    group = typer.main.get_command(cli.app)
    group._table.pop("encrypt")
    assert group.get_command(None, "encrypt").name == "encrypt"  # type: ignore[union-attr]
    table = {k: v for k, v in cli._table().items() if v[0] != "medtools.secure.commands"}
    monkeypatch.setattr(cli, "_table", lambda: table)
    group = typer.main.get_command(cli.app)  # a family the table lacks is loaded at start
    assert {"encrypt", "keys"} <= set(group.list_commands(None))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from medtools.core.io import Image, write_image
    from medtools.secure import container, seal
    from medtools.secure.keystore import generate_key_file, read_key_file

    root = tmp_path_factory.mktemp("startup")
    key = generate_key_file(root / "key.hex")
    plain = root / "plain.bin"
    plain.write_bytes(os.urandom(3000))
    with open(plain, "rb") as source, open(root / "plain.bin.mte", "wb") as target:
        container.encrypt_stream(source, target, [container.KeyRecipient(read_key_file(key))], name="plain.bin")
    write_image(Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), root / "vol.nii.gz")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / "cls" / label).mkdir(parents=True)
        write_image(Image(np.zeros((8, 8), np.uint8)), root / "cls" / label / "p1_a.png")
    seal.write_json(seal.seal_folder(root / "cls", hmac_key=read_key_file(key)).to_json(), root / "seal.json", overwrite=False)
    return {"root": root, "key": key, "plain": plain}


COMMANDS_WITHOUT_MODEL = {
    "encrypt": ("secure", ["encrypt", "{root}/plain.bin", "-o", "{root}/out.mte", "--key", "{key}", "-q"]),
    "decrypt": ("secure", ["decrypt", "{root}/plain.bin.mte", "-o", "{root}/out.bin", "--key", "{key}", "-q"]),
    "seal": ("secure", ["seal", "{root}/cls", "-o", "{root}/seal2.json", "--hmac-key", "{key}", "-q"]),
    "verify": ("secure", ["verify", "{root}/seal.json", "{root}/cls", "--hmac-key", "{key}", "-q"]),
    "info": ("utility", ["info", "{root}/vol.nii.gz"]),
    "manifest": ("utility", ["manifest", "{root}/cls", "-o", "{root}/m.csv", "-q"]),
}


@pytest.mark.parametrize("name", list(COMMANDS_WITHOUT_MODEL))
def test_a_command_without_a_model_imports_no_torch_and_no_other_family(files: dict[str, Path], name: str, tmp_path: Path) -> None:
    family, template = COMMANDS_WITHOUT_MODEL[name]
    args = [a.format(root=files["root"], key=files["key"]) for a in template]
    code, modules, proc = run_in_process(tmp_path / "r.json", *args)
    assert code == 0, proc.stderr
    assert "torch" not in modules and "timm" not in modules and "rich" not in modules
    assert families_loaded(modules) == {family}, f"{name} imported {families_loaded(modules) - {family}}"
    if name == "decrypt":
        assert (files["root"] / "out.bin").read_bytes() == files["plain"].read_bytes()


@pytest.mark.parametrize("name", ["encrypt", "decrypt", "seal", "verify"])
def test_a_byte_level_command_imports_no_numpy(files: dict[str, Path], name: str, tmp_path: Path) -> None:
    """Encrypting, decrypting and sealing bytes is start-up bound: no numpy (~0.1 s) on that path."""
    _, template = COMMANDS_WITHOUT_MODEL[name]
    args = [a.format(root=files["root"], key=files["key"]).replace("out.", f"{name}-np.").replace("seal2", "seal-np") for a in template]
    code, modules, proc = run_in_process(tmp_path / "r.json", *args)
    assert code == 0, proc.stderr
    assert "numpy" not in modules, f"{name} imported numpy"
