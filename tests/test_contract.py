"""The path contract of docs/cli.md, one test per rule, each over every command it applies to.

The commands come from the live command registry (``medtools.cli.app``), so a new command,
or a new output option named in ``core.paths.OUTPUT_OPTIONS``, is covered without editing
this file. Everything runs on a few tiny phantom images; no model is trained.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MEDTOOLS, run_cli

ENV = {**os.environ, "MEDTOOLS_DEVICE": "cpu", "OMP_WAIT_POLICY": "PASSIVE"}


def _leaves(group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if getattr(cmd, "commands", None):
            yield from _leaves(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def registry() -> list[tuple[tuple[str, ...], object]]:
    """Every runnable command of the app, as (name path, click command)."""
    import typer

    from medtools.cli import app

    return list(_leaves(typer.main.get_group(app)))


COMMANDS = registry()


def _ids(cases):
    return [" ".join(path) + (f" {extra}" if extra else "") for path, _, extra in cases]


def _argv(cmd, values: dict[str, str]) -> list[str]:
    """Command-line arguments for ``cmd``: ``values`` by parameter name, dummies for the rest
    that are required (a missing file named ``absent-N``, so that nothing real is read)."""
    args: list[str] = []
    positional: list[str] = []
    for index, param in enumerate(cmd.params):
        value = values.get(param.name)
        if value is None and not param.required:
            continue
        value = value if value is not None else f"absent-{index}"
        if param.param_type_name == "argument":
            positional.append(value)
        else:
            args += [param.opts[0], value]
    return [*args, *positional]


def _invoke(path: tuple[str, ...], argv: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDTOOLS, *path, *argv], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A few 32×32 chest phantoms, an image to protect, a key file (0600)."""
    from medtools.phantom.generate import write_cxr_phantoms

    root = tmp_path_factory.mktemp("contract")
    write_cxr_phantoms(root / "cxr", n=4, patients=2, size=32, seed=0)
    shutil.copy(next((root / "cxr").rglob("*.png")), root / "victim.png")
    run_cli("keys", "gen-key", root / "k.key", check=True)
    return root


# ------------------------------------------------------------------ 1. no output is an input


def _output_cases():
    from medtools.core.paths import OUTPUT_OPTIONS

    cases = []
    for path, cmd in COMMANDS:
        names = [p.name for p in cmd.params]
        if _first_input(cmd) is not None:
            cases.extend((path, cmd, out) for out in names if out in OUTPUT_OPTIONS)
    return cases


def _first_input(cmd) -> str | None:
    """The parameter that names what the command reads: its first argument, else its model."""
    arguments = [p.name for p in cmd.params if p.param_type_name == "argument"]
    return arguments[0] if arguments else next((p.name for p in cmd.params if p.name == "model"), None)


OUTPUT_CASES = _output_cases()


@pytest.mark.parametrize(("path", "cmd", "out"), OUTPUT_CASES, ids=_ids(OUTPUT_CASES))
def test_an_output_that_resolves_to_an_input_is_exit_2(data, tmp_path, path, cmd, out):
    """The same file, a symbolic link to it and a hard link to it, for every output option."""
    victim = tmp_path / "victim.png"
    shutil.copy(data / "victim.png", victim)
    before = victim.read_bytes()
    (tmp_path / "link.png").symlink_to(victim)
    os.link(victim, tmp_path / "hard.png")
    first_input = _first_input(cmd)
    for target in ("victim.png", "link.png", "hard.png"):
        argv = _argv(cmd, {first_input: "victim.png", out: target})
        if any(p.name == "overwrite" for p in cmd.params):
            argv.insert(0, "--overwrite")
        proc = _invoke(path, argv, tmp_path)
        assert proc.returncode == 2 and "would overwrite the input" in proc.stderr, (target, proc.stderr)
        assert victim.read_bytes() == before and (tmp_path / "link.png").is_symlink()


def test_an_output_inside_an_input_folder_that_the_walk_reads_is_exit_2(data, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(data / "cxr", folder)
    image = next(folder.rglob("*.png"))
    before = image.read_bytes()
    for argv in (["manifest", folder, "-o", image], ["deid", folder, "-o", tmp_path / "out", "--mapping", image], ["decrypt", folder, "--key", data / "k.key", "-o", tmp_path / "d", "--audit-log", image]):
        proc = run_cli(*argv)
        assert proc.returncode == 2 and "would overwrite the input" in proc.stderr, proc.stderr
    assert image.read_bytes() == before
    assert run_cli("manifest", folder, "-o", folder / "manifest.csv").returncode == 0  # a new file there is fine
    # seal reads every file below its folder: any of them, not only images
    (folder / "notes.txt").write_text("notes")
    proc = run_cli("seal", folder, "-o", folder / "notes.txt", "--overwrite")
    assert proc.returncode == 2 and (folder / "notes.txt").read_text() == "notes", proc.stderr
    run_cli("seal", folder, "-o", folder / "seal.json", check=True)
    run_cli("seal", folder, "-o", folder / "seal.json", "--overwrite", check=True)  # an earlier manifest is replaced


# ------------------------------------------------------------------ 2. temporary files are ours


def test_only_medtools_temporary_files_are_swept_and_names_fit_name_max(data, tmp_path):
    from medtools.core.io.atomic import is_part_name, part_name

    out = tmp_path / "out"
    out.mkdir()
    lookalikes = [out / ".scan.abcd1234.part.txt", out / ".notes.deadbeef.part.md", out / ".x.mt-0123abcd-1-00000000.part.png"]
    for path in lookalikes:
        path.write_text("user data")
    stale = part_name(out / "old.png.mte")  # left by a run killed with SIGKILL
    stale.write_bytes(b"partial")
    assert is_part_name(stale.name) and not any(is_part_name(p.name) for p in lookalikes)
    long_name = "b" * 249 + ".mte"  # 253 bytes: legal, its temporary name must fit too
    run_cli("encrypt", data / "victim.png", "--key", data / "k.key", "-o", out / long_name, check=True)
    assert (out / long_name).is_file() and not stale.exists()
    assert all(p.read_text() == "user data" for p in lookalikes)
    assert all(len(part_name(out / ("é" * 126 + ext)).name.encode()) <= 255 for ext in (".nii.gz", ".png", ""))


# ------------------------------------------------------------------ 3. every output stays under -o


def test_names_from_data_stay_under_the_output_folder(tmp_path):
    from medtools.core.paths import safe_part, safe_relpath, under

    for hostile in ("../../X", "/etc/passwd", "a/../../b", "..", "", "x\ny", "C:\\..\\w", "./.."):
        target = under(tmp_path / "out", hostile)
        assert os.path.abspath(target).startswith(str(tmp_path / "out") + os.sep), hostile
        assert "\n" not in str(target)
        assert "/" not in safe_part(hostile) and safe_part(hostile) not in ("", ".", "..")
        assert not safe_relpath(hostile).is_absolute()
    assert len(safe_part("x" * 400).encode()) <= 255


def test_manifest_case_names_and_case_folders_never_take_outputs_out(data, tmp_path):
    from medtools.brain.cases import resolve_cases
    from medtools.phantom.generate import write_brain_phantoms

    cases = tmp_path / "cases"
    write_brain_phantoms(cases, patients=1, visits=1, size=16, slices=4, seed=0)
    flair = next(cases.rglob("*_flair.nii.gz"))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"patient,case,flair\np,../../X,{flair.parent}/../{flair.parent.name}/{flair.name}\n")
    case = resolve_cases([str(manifest)])[0]
    target = tmp_path / "out" / case.rel_dir / f"{case.case}_seg.nii.gz"
    assert os.path.abspath(target).startswith(str(tmp_path / "out") + os.sep)
    # -o a case folder of the input: refused like the input folder itself
    for out in (flair.parent, cases):
        proc = run_cli("segment", cases, "-m", tmp_path / "absent.safetensors", "-o", out)
        assert proc.returncode == 2, proc.stderr


# ------------------------------------------------------------------ 4. input walking


def _folder_commands():
    """Commands whose positional argument takes files and folders (``inputs``)."""
    return [(path, cmd, None) for path, cmd in COMMANDS if any(p.name == "inputs" and p.param_type_name == "argument" for p in cmd.params)]


FOLDER_CASES = _folder_commands()


@pytest.fixture(scope="module")
def odd_folder(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("odd") / "in"
    folder.mkdir()
    shutil.copy(data / "victim.png", folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    os.mkfifo(folder / "pipe")
    shutil.copy(data / "victim.png", folder / "two\nlines.png")
    return folder


@pytest.mark.parametrize(("path", "cmd", "extra"), FOLDER_CASES, ids=_ids(FOLDER_CASES))
def test_a_named_pipe_in_a_folder_never_hangs_a_command(odd_folder, data, tmp_path, path, cmd, extra):
    values = {"inputs": str(odd_folder)}
    names = {p.name for p in cmd.params}
    if "output" in names:
        values["output"] = str(tmp_path / "out")
    if "key" in names:
        values["key"] = str(data / "k.key")
    tiny = (("epochs", "1"), ("steps_per_epoch", "1"), ("batch_size", "2"), ("size", "16"), ("widths", "8,16"), ("norm_groups", "4"), ("layers_per_block", "1"), ("timesteps", "10"), ("latent_channels", "2,2"), ("steps", "1"))
    for name, value in tiny:
        if name in names:  # training commands: the smallest run that still reads the folder
            values[name] = value
    proc = _invoke(path, _argv(cmd, values), tmp_path, timeout=60)  # a blocked open() would time out
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode != 2 or "pipe" not in proc.stderr


def test_non_regular_files_and_line_breaks_are_reported_and_skipped(odd_folder, data, tmp_path):
    proc = subprocess.run([*MEDTOOLS, "encrypt", odd_folder, "--key", data / "k.key", "-o", tmp_path / "enc"], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "enc" / "a.png.mte")]  # one path, one line
    assert "pipe.png: a named pipe" in proc.stderr and "line break" in proc.stderr
    # NUL-separated names (find -print0 | xargs -0): the line-break name is refused with one line
    listing = subprocess.run(["find", odd_folder, "-type", "f", "-print0"], capture_output=True, check=True).stdout
    xargs = subprocess.run(["xargs", "-0", *map(str, MEDTOOLS), "info", "--json"], input=listing, capture_output=True, env=ENV, timeout=60)
    lines = xargs.stdout.decode().splitlines()
    assert len(lines) == 1 and '"a.png"' in lines[0] or "a.png" in lines[0], xargs.stdout
    assert xargs.stderr.decode().count("line break") == 1


# ------------------------------------------------------------------ 6. private key material


def _secret_readers(tmp_path: Path):
    """(what, writer of a fresh secret at a path, reader) for every kind of private key material."""
    from medtools.collab import klt
    from medtools.core.secrets import read_key_file
    from medtools.secure.keystore import KeyStore
    from medtools.secure.signature import sign

    def key_file(p):
        run_cli("keys", "gen-key", p, check=True)

    def ed25519(p):
        run_cli("keys", "gen-key", "--ed25519", p, check=True)

    def store(p):
        run_cli("keys", "init", p, check=True)

    def klt_key(p):
        klt.save_key(klt.generate([2, 3], seed=0), p)

    readers = [
        ("key file", key_file, read_key_file),
        ("Ed25519 signing key", ed25519, lambda p: sign("00" * 32, 1, signing_key=p)),
        ("key store", store, KeyStore.load),
        ("KLT key", klt_key, klt.load_key),
    ]
    try:
        from medtools.index import he

        def ckks(p):
            he.keygen(p.parent / "ctx")
            shutil.copy(p.parent / "ctx" / "secret", p)

        readers.append(("secret CKKS context", ckks, lambda p: he.load_context(p, secret=True)))
    except ImportError:  # pragma: no cover - the [he] extra
        pass
    return readers


def test_every_kind_of_private_key_material_open_to_others_is_refused(tmp_path):
    from medtools.core.errors import UsageError

    for what, write, read in _secret_readers(tmp_path):
        path = tmp_path / what.replace(" ", "-")
        write(path)
        os.chmod(path, 0o600)
        read(path)  # accepted when private
        os.chmod(path, 0o644)
        with pytest.raises(UsageError, match="chmod 600"):
            read(path)


def test_klt_commands_refuse_a_key_open_to_others(tmp_path):
    from medtools.collab import klt

    key = klt.save_key(klt.generate([2], seed=0), tmp_path / "k.safetensors")
    os.chmod(key, 0o644)
    for path, cmd in COMMANDS:
        if path[0] in ("klt-encode", "klt-decode", "umn-map"):
            proc = _invoke(path, _argv(cmd, {"key": str(key), "inputs": str(tmp_path), "output": str(tmp_path / "o")}), tmp_path)
            assert proc.returncode in (2, 3), proc.stderr  # 3: the absent model may be checked first


# ------------------------------------------------------------------ 8. messages name the cause once


def test_messages_name_the_cause_once(data, tmp_path):
    import struct

    import nibabel as nib
    import numpy as np

    # a NIfTI header claiming 140 TB: an input error naming the size
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "small.nii")
    raw = bytearray((tmp_path / "small.nii").read_bytes())
    struct.pack_into("<8h", raw, 40, 3, 32767, 32767, 32767, 1, 1, 1, 1)
    (tmp_path / "huge.nii").write_bytes(bytes(raw))
    for command in (["info"], ["convert", "--to", "npy", "-o", tmp_path / "c"]):
        proc = run_cli(*command, tmp_path / "huge.nii")
        assert proc.returncode == 5 and "TB" in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr
        assert proc.stderr.count("huge.nii") == 1, proc.stderr
    # a flipped byte in the .mte header: integrity (4), the header is named, not the password
    sealed = run_cli("encrypt", data / "victim.png", "--key", data / "k.key", "-o", tmp_path / "v.mte", check=True)
    blob = bytearray((tmp_path / "v.mte").read_bytes())
    at = blob.index(b'"body":"') + 12
    blob[at] = ord("A") if blob[at] != ord("A") else ord("B")
    (tmp_path / "bad.mte").write_bytes(bytes(blob))
    proc = run_cli("decrypt", tmp_path / "bad.mte", "--key", data / "k.key", "-o", tmp_path / "bad.png")
    assert sealed.returncode == 0 and proc.returncode == 4 and "header is damaged" in proc.stderr, proc.stderr
    assert not (tmp_path / "bad.png").exists()
    # a DICOM series with a truncated file: dcm2niix's real reason, the folder named once
    from medtools.core.io.dicom import summarise_tool_output

    log = "Found 3 DICOM file(s)\nWarning: Empty protocol name(s)\nFileSize < (ImageSize+HeaderSize)\nWarning: File not large enough to store image data: s/IM2.dcm\n"
    assert summarise_tool_output(log) == "Warning: File not large enough to store image data: s/IM2.dcm"
    series = _truncated_series(tmp_path / "series")
    proc = run_cli("info", series)
    assert proc.returncode == 5 and "not large enough" in proc.stderr and proc.stderr.count(f"{series}:") == 1, proc.stderr


def _truncated_series(folder: Path) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder.mkdir()
    for i in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{i}"
        ds.ProtocolName = ""
        ds.save_as(folder / f"s{i}.dcm")
    path = folder / "s1.dcm"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return folder
