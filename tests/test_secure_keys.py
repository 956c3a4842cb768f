"""medtools keys: store creation, users, passwords (file, env, TTY prompt), removal, key files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MEDTOOLS, run_cli

FAST = {"MEDTOOLS_SCRYPT_LOG_N": "10"}


def store_with(tmp_path: Path, *users: str, cli: bool = False) -> tuple[Path, dict[str, Path]]:
    """A store with these users (password "<name>-secret-pw"), through the CLI or the API."""
    from medtools.secure.keystore import KeyStore

    store = tmp_path / "store.json"
    files = {name: tmp_path / f"{name}.pw" for name in users}
    for name, path in files.items():
        path.write_text(f"{name}-secret-pw\n")
    if cli:
        run_cli("keys", "init", store, env=FAST, check=True)
        for name in users:
            run_cli("keys", "add-user", store, name, "--password-file", files[name], env=FAST, check=True)
    else:
        keystore = KeyStore.create(store, log_n=10)
        for name in users:
            keystore.add_user(name, f"{name}-secret-pw".encode())
    return store, files


def test_store_is_private_lists_users_and_holds_no_plain_secret(tmp_path):
    store, files = store_with(tmp_path, "alice", "bob", cli=True)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    listed = run_cli("keys", "list", store, check=True)
    assert listed.stdout.split() == ["alice", "bob"]
    described = json.loads(run_cli("keys", "list", store, "--json", check=True).stdout)
    assert [d["user"] for d in described] == ["alice", "bob"] and all(d["scrypt_log_n"] == 10 for d in described)
    text = store.read_text()
    assert "alice-secret-pw" not in text and "bob-secret-pw" not in text
    data = json.loads(text)
    assert set(data["users"]["alice"]) >= {"public_key", "kdf", "nonce", "sealed_private_key"}
    assert data["users"]["alice"]["kdf"]["salt"] != data["users"]["bob"]["kdf"]["salt"]


def test_password_is_never_a_flag_and_needs_a_source(tmp_path):
    store, _ = store_with(tmp_path)
    flag = run_cli("keys", "add-user", store, "carol", "--password", "x", env=FAST)
    assert flag.returncode == 2
    # no file, no env, no terminal (new session): a usage error, not a hang
    env = {k: v for k, v in os.environ.items() if k != "MEDTOOLS_PASSWORD"}
    proc = subprocess.run([*MEDTOOLS, "keys", "add-user", str(store), "carol"], capture_output=True, text=True, env={**env, **FAST}, start_new_session=True, timeout=60)
    assert proc.returncode == 2 and "password" in proc.stderr
    duplicate_pw = tmp_path / "pw"
    duplicate_pw.write_text("x\n")
    run_cli("keys", "add-user", store, "carol", "--password-file", duplicate_pw, env=FAST, check=True)
    again = run_cli("keys", "add-user", store, "carol", "--password-file", duplicate_pw, env=FAST)
    assert again.returncode == 2 and "already" in again.stderr


def test_tty_prompt_asks_twice_and_rejects_a_mismatch(tmp_path):
    pty = pytest.importorskip("pty")
    store, _ = store_with(tmp_path)

    def add(name: str, first: str, second: str) -> int:
        pid, fd = pty.fork()
        if pid == 0:  # child: a session with this pty as controlling terminal
            env = {k: v for k, v in os.environ.items() if k != "MEDTOOLS_PASSWORD"}
            os.execve(sys.executable, [*MEDTOOLS, "keys", "add-user", str(store), name], {**env, **FAST})
        seen = b""
        for answer in (first, second):
            while b":" not in seen.rsplit(b"\n", 1)[-1]:
                seen += os.read(fd, 1024)
            os.write(fd, answer.encode() + b"\n")
            seen += b"\n"
        try:
            while os.read(fd, 1024):
                pass
        except OSError:
            pass
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert add("dave", "pw-1", "pw-2") == 2
    assert add("dave", "same-pw", "same-pw") == 0
    assert "dave" in run_cli("keys", "list", store, check=True).stdout.split()


def test_passwd_keeps_old_files_readable_and_old_password_fails(tmp_path):
    store, files = store_with(tmp_path, "alice")
    plain = tmp_path / "report.txt"
    plain.write_text("findings\n")
    run_cli("encrypt", plain, "-o", tmp_path / "enc", "--to", store, check=True)
    new_pw = tmp_path / "new.pw"
    new_pw.write_text("brand-new-pw\n")
    run_cli("keys", "passwd", store, "alice", "--password-file", files["alice"], "--new-password-file", new_pw, env=FAST, check=True)
    old = run_cli("decrypt", tmp_path / "enc" / "report.txt.mte", "-o", tmp_path / "old", "--store", store, "--user", "alice", "--password-file", files["alice"])
    assert old.returncode == 4 and not (tmp_path / "old" / "report.txt").exists()
    new = run_cli("decrypt", tmp_path / "enc" / "report.txt.mte", "-o", tmp_path / "new", "--store", store, "--user", "alice", "--password-file", new_pw, check=True)
    assert (tmp_path / "new" / "report.txt").read_text() == "findings\n" and new.stdout.strip().endswith("report.txt")
    wrong_old = run_cli("keys", "passwd", store, "alice", "--password-file", files["alice"], "--new-password-file", new_pw, env=FAST)
    assert wrong_old.returncode == 4


def test_removed_user_cannot_open_files_encrypted_after_removal(tmp_path):
    store, files = store_with(tmp_path, "alice", "bob")
    before = tmp_path / "before.txt"
    before.write_text("old study\n")
    run_cli("encrypt", before, "-o", tmp_path / "enc", "--to", store, check=True)
    stolen_copy = tmp_path / "bob-copy-of-store.json"
    shutil.copy(store, stolen_copy)
    run_cli("keys", "remove", store, "bob", check=True)
    assert run_cli("keys", "list", store, check=True).stdout.split() == ["alice"]
    after = tmp_path / "after.txt"
    after.write_text("new study\n")
    run_cli("encrypt", after, "-o", tmp_path / "enc", "--to", store, check=True)
    for keystore in (store, stolen_copy):
        proc = run_cli("decrypt", tmp_path / "enc" / "after.txt.mte", "-o", tmp_path / "out", "--store", keystore, "--user", "bob", "--password-file", files["bob"])
        assert proc.returncode == 4, proc.stderr
        assert not (tmp_path / "out" / "after.txt").exists()
    # alice still opens it; bob's old copy still opens what was shared with him before
    run_cli("decrypt", tmp_path / "enc" / "after.txt.mte", "-o", tmp_path / "alice", "--store", store, "--password-file", files["alice"], check=True)
    assert (tmp_path / "alice" / "after.txt").read_text() == "new study\n"
    run_cli("decrypt", tmp_path / "enc" / "before.txt.mte", "-o", tmp_path / "bob", "--store", stolen_copy, "--user", "bob", "--password-file", files["bob"], check=True)


def test_gen_key_writes_private_hex_key_and_ed25519_pair(tmp_path):
    proc = run_cli("keys", "gen-key", tmp_path / "k.key", check=True)
    key = tmp_path / "k.key"
    assert proc.stdout.strip() == str(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32
    assert run_cli("keys", "gen-key", key).returncode == 2  # no silent overwrite
    pair = run_cli("keys", "gen-key", "--ed25519", tmp_path / "sign.pem", check=True).stdout.split()
    assert pair == [str(tmp_path / "sign.pem"), str(tmp_path / "sign.pem.pub")]
    assert "PRIVATE KEY" in (tmp_path / "sign.pem").read_text() and "PUBLIC KEY" in (tmp_path / "sign.pem.pub").read_text()
    assert stat.S_IMODE((tmp_path / "sign.pem").stat().st_mode) == 0o600


def test_command_module_imports_nothing_heavy():
    code = "import sys, medtools.secure.commands; print(sorted(m for m in ('numpy', 'Crypto', 'pydicom', 'scipy', 'matplotlib') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_stream_encryption_refuses_a_terminal(tmp_path):
    pty = pytest.importorskip("pty")
    store, _ = store_with(tmp_path, "alice")
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [*MEDTOOLS, "encrypt", "-", "--to", str(store)], dict(os.environ))
    output = b""
    try:
        while chunk := os.read(fd, 1024):
            output += chunk
    except OSError:
        pass
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 2
    assert b"terminal" in output
