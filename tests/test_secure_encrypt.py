"""medtools encrypt/decrypt with aes-gcm: folders, streams, tampering, wrong passwords, audit log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MEDTOOLS, run_cli

FAST = {"MEDTOOLS_SCRYPT_LOG_N": "10"}


@pytest.fixture()
def doctors(tmp_path):
    """A store with alice and bob (made through the API: the keys CLI has its own tests)."""
    from medtools.secure.keystore import KeyStore

    store = KeyStore.create(tmp_path / "store.json", log_n=10)
    passwords = {}
    for name in ("alice", "bob"):
        passwords[name] = tmp_path / f"{name}.pw"
        passwords[name].write_text(f"{name}-correct-horse\n")
        store.add_user(name, f"{name}-correct-horse".encode())
    return store.path, passwords


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    (root / "p001").mkdir(parents=True)
    (root / "p001" / "scan.nii.gz").write_bytes(os.urandom(300_000))
    (root / "notes.txt").write_text("patient notes\n")
    (root / "empty.bin").write_bytes(b"")
    return root


def run_bytes(*args, data: bytes, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDTOOLS, *map(str, args)], input=data, capture_output=True, env={**os.environ, **FAST, **(env or {})}, timeout=300)


def test_folder_round_trip_mirrors_layout_and_skips_existing(tmp_path, doctors, folder):
    store, passwords = doctors
    enc = tmp_path / "enc"
    first = run_cli("encrypt", folder, "-o", enc, "--to", store, check=True)
    expected = sorted(str(enc / p) for p in ("empty.bin.mte", "notes.txt.mte", "p001/scan.nii.gz.mte"))
    assert sorted(first.stdout.split()) == expected
    assert all(b"patient notes" not in Path(p).read_bytes() for p in expected)
    stamp = (enc / "notes.txt.mte").stat().st_mtime_ns
    again = run_cli("encrypt", folder, "-o", enc, "--to", store, check=True)
    assert again.stdout == "" and (enc / "notes.txt.mte").stat().st_mtime_ns == stamp
    run_cli("encrypt", folder, "-o", enc, "--to", store, "--overwrite", check=True)
    assert (enc / "notes.txt.mte").read_bytes() != b""
    dec = tmp_path / "dec"
    out = run_cli("decrypt", enc, "-o", dec, "--store", store, "--user", "bob", "--password-file", passwords["bob"], "--json", check=True)
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert {r["user"] for r in records} == {"bob"} and len(records) == 3
    for rel in ("p001/scan.nii.gz", "notes.txt", "empty.bin"):
        assert (dec / rel).read_bytes() == (folder / rel).read_bytes()


def test_without_user_each_recipient_is_tried_with_the_password(tmp_path, doctors, folder):
    store, passwords = doctors
    run_cli("encrypt", folder / "notes.txt", "-o", tmp_path / "n.mte", "--to", store, check=True)
    out = run_cli("decrypt", tmp_path / "n.mte", "-o", tmp_path / "n.txt", "--store", store, "--password-file", passwords["bob"], "--json", check=True)
    assert json.loads(out.stdout)["user"] == "bob"
    assert (tmp_path / "n.txt").read_text() == "patient notes\n"


def test_wrong_password_exits_4_writes_nothing_and_audit_log_has_no_secret(tmp_path, doctors, folder):
    store, passwords = doctors
    key = tmp_path / "k.key"
    run_cli("keys", "gen-key", key, check=True)
    log = tmp_path / "audit.jsonl"
    run_cli("encrypt", folder, "-o", tmp_path / "enc", "--to", store, "--key", key, "--audit-log", log, check=True)
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    for extra in ([], ["--user", "alice"]):
        proc = run_cli("decrypt", tmp_path / "enc", "-o", tmp_path / "dec", "--store", store, "--password-file", wrong, "--audit-log", log, *extra)
        assert proc.returncode == 4, proc.stderr
        assert "wrong password" in proc.stderr, proc.stderr  # also without --user: never "tried: none"
        assert [p for p in (tmp_path / "dec").rglob("*") if p.is_file()] == []  # no output, no temp file (a missing folder globs empty)
    env_ok = run_cli("decrypt", tmp_path / "enc", "-o", tmp_path / "ok", "--store", store, "--audit-log", log, env={"MEDTOOLS_PASSWORD": "alice-correct-horse"})
    assert env_ok.returncode == 0, env_ok.stderr
    run_cli("decrypt", tmp_path / "enc" / "notes.txt.mte", "-o", tmp_path / "bykey.txt", "--key", key, "--audit-log", log, check=True)
    assert (tmp_path / "bykey.txt").read_text() == "patient notes\n"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    results = [(r["action"], r["result"]) for r in lines]
    assert results.count(("encrypt", "ok")) == 3 and results.count(("decrypt", "denied")) == 6 and results.count(("decrypt", "ok")) == 4
    assert all(len(r["sha256"]) == 64 and "time" in r for r in lines)
    text = log.read_text()
    secrets = ["alice-correct-horse", "bob-correct-horse", "not-the-password", key.read_text().strip()]
    store_data = json.loads(store.read_text())
    secrets += [u["sealed_private_key"] for u in store_data["users"].values()] + [u["kdf"]["salt"] for u in store_data["users"].values()]
    assert not [s for s in secrets if s in text]


def test_tampered_and_truncated_files_exit_4_without_output(tmp_path, doctors, folder):
    store, passwords = doctors
    enc = tmp_path / "scan.mte"
    run_cli("encrypt", folder / "p001" / "scan.nii.gz", "-o", enc, "--to", store, "--chunk-size", "65536", check=True)
    blob = enc.read_bytes()
    header_end = 13 + int.from_bytes(blob[9:13], "big") + 32
    cases = {
        "magic": (lambda b: b[:2] + bytes([b[2] ^ 1]) + b[3:]),
        "header": (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:]),
        "mac": (lambda b: b[: header_end - 3] + bytes([b[header_end - 3] ^ 1]) + b[header_end - 2 :]),
        "body": (lambda b: b[:-70_000] + bytes([b[-70_000] ^ 0x80]) + b[-69_999:]),
        "last-tag": (lambda b: b[:-1] + bytes([b[-1] ^ 1])),
        "truncated": (lambda b: b[: header_end + 65536 + 16]),
    }
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, damage in cases.items():
        (bad / f"{name}.mte").write_bytes(damage(blob))
    out = tmp_path / "out"
    proc = run_cli("decrypt", bad, "-o", out, "--store", store, "--user", "alice", "--password-file", passwords["alice"])
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == ""
    for name in cases:
        assert f"{name}.mte:" in proc.stderr, name
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]  # no output, no temp leftovers
    good = run_cli("decrypt", enc, "-o", out / "scan.nii.gz", "--store", store, "--user", "alice", "--password-file", passwords["alice"], check=True)
    assert (out / "scan.nii.gz").read_bytes() == (folder / "p001" / "scan.nii.gz").read_bytes() and good.stdout.strip() == str(out / "scan.nii.gz")


def test_stdin_stream_round_trip_in_constant_memory(tmp_path, doctors):
    store, passwords = doctors
    data = os.urandom(48 << 20)
    probe = (
        "import resource, runpy, sys\n"
        "sys.argv = ['medtools', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('medtools', run_name='__main__')\n"
        "finally:\n    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )

    def measured(*args, data: bytes, env=None):
        proc = subprocess.run([sys.executable, "-c", probe, *map(str, args)], input=data, capture_output=True, env={**os.environ, **FAST, **(env or {})}, timeout=300)
        rss = int(proc.stderr.decode().rsplit("maxrss_kb", 1)[1].split()[0])
        return proc, rss

    enc, enc_rss = measured("encrypt", "-", "--to", store, data=data)
    assert enc.returncode == 0, enc.stderr
    assert enc.stdout[:8] == b"\x89MTE\r\n\x1a\n" and len(enc.stdout) > len(data)
    dec, dec_rss = measured("decrypt", "-", "--store", store, "--password-file", passwords["alice"], data=enc.stdout)
    assert dec.returncode == 0 and dec.stdout == data
    baseline = measured("keys", "list", store, data=b"")[1]
    # 48 MiB went through; a process holding it would grow by >= 48 MiB
    assert enc_rss - baseline < 24 * 1024 and dec_rss - baseline < 24 * 1024, (baseline, enc_rss, dec_rss)
    bad = bytearray(enc.stdout)
    bad[len(bad) // 2] ^= 1
    assert run_bytes("decrypt", "-", "--store", store, "--password-file", passwords["alice"], data=bytes(bad)).returncode == 4
    assert run_bytes("decrypt", "-", "--store", store, "--password-file", passwords["alice"], data=enc.stdout[:-5]).returncode == 4


def test_usage_errors(tmp_path, doctors, folder):
    store, _ = doctors
    assert run_cli("encrypt", folder, "-o", tmp_path / "x").returncode == 2  # no recipients
    assert run_cli("encrypt", folder, "-o", tmp_path / "x", "--to", store, "--method", "rot13").returncode == 2
    assert run_cli("decrypt", folder, "-o", tmp_path / "x").returncode == 2  # no credentials
    assert run_cli("encrypt", tmp_path / "nope", "-o", tmp_path / "x", "--to", store).returncode == 5
