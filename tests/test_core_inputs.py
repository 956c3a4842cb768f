"""core.inputs: arguments → items with mirrored relative paths; shards; output rules."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from medtools.core.errors import InputError, UsageError
from medtools.core.inputs import Item, check_output_arg, expand_inputs, output_for, parse_shard, shard_items


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """root/{a,b}/{scan.nii.gz,mask.png}, a hidden file, an unsupported file."""
    root = tmp_path / "root"
    for case in ("a", "b"):
        (root / case).mkdir(parents=True)
        (root / case / "scan.nii.gz").write_bytes(b"x")
        (root / case / "mask.png").write_bytes(b"x")
    (root / "a" / ".hidden.png").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    return root


def rels(items: list[Item]) -> list[str]:
    return sorted(str(i.rel) for i in items)


def test_folder_is_walked_for_supported_files_with_relative_paths(tree: Path) -> None:
    items = expand_inputs([tree])
    assert rels(items) == ["a/mask.png", "a/scan.nii.gz", "b/mask.png", "b/scan.nii.gz"]
    assert all(i.path == tree / i.rel for i in items)


def test_exts_filter_and_duplicates_removed(tree: Path) -> None:
    items = expand_inputs([tree, tree / "a" / "scan.nii.gz"], exts=(".nii.gz",))
    assert rels(items) == ["a/scan.nii.gz", "b/scan.nii.gz"]


def test_stdin_dash_reads_paths_and_mirrors_their_layout(tree: Path, monkeypatch) -> None:
    lines = f"{tree}/a/scan.nii.gz\n\n{tree}/b/scan.nii.gz\n"
    items = expand_inputs(["-"], stdin=io.StringIO(lines))
    # absolute paths mirror below their common folder: the two scan.nii.gz stay apart
    assert rels(items) == ["a/scan.nii.gz", "b/scan.nii.gz"]
    monkeypatch.chdir(tree)
    items = expand_inputs(["-"], stdin=io.StringIO("a/mask.png\nb/mask.png\n"))
    assert rels(items) == ["a/mask.png", "b/mask.png"]


def test_stdin_folders_are_walked(tree: Path, monkeypatch) -> None:
    monkeypatch.chdir(tree.parent)
    items = expand_inputs(["-"], stdin=io.StringIO("root/a\nroot/b\n"), exts=(".nii.gz",))
    assert rels(items) == ["root/a/scan.nii.gz", "root/b/scan.nii.gz"]
    items = expand_inputs(["-"], stdin=io.StringIO(f"{tree}/a\n{tree}/b\n"), exts=(".png",))
    assert rels(items) == ["a/mask.png", "b/mask.png"]


def test_glob_mirrors_below_its_fixed_folders(tree: Path) -> None:
    items = expand_inputs([f"{tree}/*/scan.nii.gz"])
    assert rels(items) == ["a/scan.nii.gz", "b/scan.nii.gz"]


def test_missing_argument_and_empty_result_are_input_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tree / "typo.nii.gz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no supported input"):
        expand_inputs([tmp_path / "empty"])


def test_output_mirrors_layout_and_changes_extension(tree: Path, tmp_path: Path) -> None:
    item = Item(tree / "a" / "scan.nii.gz", Path("a/scan.nii.gz"))
    assert output_for(item, tmp_path / "out") == tmp_path / "out" / "a" / "scan.nii.gz"
    assert output_for(item, tmp_path / "out", ext=".npy", suffix="_seg") == tmp_path / "out" / "a" / "scan_seg.npy"
    assert output_for(item, tmp_path / "one.nii.gz", single=True) == tmp_path / "one.nii.gz"


def test_output_equal_to_input_is_refused(tree: Path) -> None:
    item = Item(tree / "a" / "scan.nii.gz", Path("a/scan.nii.gz"))
    with pytest.raises(UsageError, match="overwrite the input"):
        output_for(item, tree)
    with pytest.raises(UsageError):
        output_for(item, tree / "a" / "scan.nii.gz", single=True)


def test_check_output_arg(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="missing -o"):
        check_output_arg(None, 1)
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(UsageError, match="give a folder"):
        check_output_arg(tmp_path / "f.png", 3)
    assert check_output_arg(tmp_path / "f.png", 1) == tmp_path / "f.png"


@pytest.mark.parametrize("n_items", [0, 1, 7, 20])
@pytest.mark.parametrize("n_parts", [1, 3, 8])
def test_shards_partition_the_items(n_items: int, n_parts: int) -> None:
    items = [Item(Path(f"/data/{i:03d}.png"), Path(f"{i:03d}.png")) for i in reversed(range(n_items))]
    parts = [shard_items(items, (k, n_parts)) for k in range(1, n_parts + 1)]
    flat = [item for part in parts for item in part]
    assert sorted(map(str, flat)) == sorted(map(str, items))  # union = all
    assert len(flat) == len(set(flat))  # disjoint
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert shard_items(list(reversed(items)), (1, n_parts)) == parts[0]  # independent of input order


@pytest.mark.parametrize("spec", ["0/3", "4/3", "1/0", "x", "1-3", "2/3/4"])
def test_bad_shard_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_shard(spec)


def test_shard_defaults_from_slurm_array(monkeypatch) -> None:
    for key in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(key, raising=False)
    assert parse_shard(None) is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")  # --array=1-4
    assert parse_shard(None) == (3, 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "6")  # --array=0-6:2 → tasks 0,2,4,6
    assert parse_shard(None) == (4, 4)
    assert parse_shard("1/2") == (1, 2)  # an explicit --shard wins
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")  # outside the array: never a silent wrong part
    with pytest.raises(UsageError):
        parse_shard(None)
