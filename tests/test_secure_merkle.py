"""seal/verify: RFC 9162 tree and proofs, changed/missing/extra files, signatures, proofs checked alone."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from conftest import run_cli
from medtools.core.errors import IntegrityError
from medtools.core import merkle
from medtools.secure import seal as sealing


def leaves(n: int) -> list[bytes]:
    return [sealing.leaf_hash(f"f{i:03d}", hashlib.sha256(bytes([i])).hexdigest()) for i in range(n)]


def test_tree_matches_the_rfc_definition_on_small_trees():
    h = merkle.node_hash
    a, b, c = leaves(3)
    assert merkle.tree_root([]) == hashlib.sha256(b"").digest()
    assert merkle.tree_root([a]) == a
    assert merkle.tree_root([a, b, c]) == h(h(a, b), c)  # split at 2, never a duplicated leaf
    assert sealing.leaf_hash("x", "00" * 32) == hashlib.sha256(b"\x00" + b"\x00\x00\x00\x01x" + bytes(32)).digest()
    assert merkle.tree_root([a, b]) != merkle.tree_root([b, a])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_every_audit_path_leads_to_the_root_and_only_for_its_leaf(n):
    items = leaves(n)
    root = merkle.tree_root(items)
    for index in range(n):
        path = merkle.audit_path(items, index)
        assert merkle.root_from_path(items[index], index, n, path) == root
        if n > 1:
            assert merkle.root_from_path(items[(index + 1) % n], index, n, path) != root
            forged = list(path)
            forged[0] = bytes(32)
            assert merkle.root_from_path(items[index], index, n, forged) != root


@pytest.fixture()
def sealed(tmp_path):
    data = tmp_path / "db"
    (data / "p01").mkdir(parents=True)
    (data / "p01" / "a.mte").write_bytes(os.urandom(5000))
    (data / "p01" / "b.mte").write_bytes(os.urandom(3000))
    (data / "index.json").write_text('{"n": 2}\n')
    manifest = tmp_path / "manifest.json"
    out = run_cli("seal", data, "-o", manifest, check=True)
    assert out.stdout.strip() == str(manifest)
    return data, manifest


def test_verify_detects_changed_missing_and_extra_files(tmp_path, sealed):
    data, manifest = sealed
    ok = run_cli("verify", manifest, data)
    assert ok.returncode == 0 and ok.stdout == ""
    blob = bytearray((data / "p01" / "a.mte").read_bytes())
    blob[1234] ^= 1
    (data / "p01" / "a.mte").write_bytes(bytes(blob))
    changed = run_cli("verify", manifest, data)
    assert changed.returncode == 4 and changed.stdout.split("\n")[0] == "changed\tp01/a.mte"
    (data / "p01" / "b.mte").unlink()
    (data / "p01" / "c.mte").write_bytes(b"planted")
    report = json.loads(run_cli("verify", manifest, data, "--json").stdout)
    assert report == {"ok": False, "root_matches_files": True, "signature": "unsigned", "changed": ["p01/a.mte"], "missing": ["p01/b.mte"], "extra": ["p01/c.mte"]}
    assert run_cli("verify", manifest, data).returncode == 4


def test_manifest_inside_the_folder_and_edited_manifest(tmp_path, sealed):
    data, _ = sealed
    inside = data / "SEAL.json"
    run_cli("seal", data, "-o", inside, check=True)
    assert run_cli("verify", inside, data).returncode == 0  # the manifest is not an extra file
    content = json.loads(inside.read_text())
    content["files"][0]["sha256"] = "00" * 32  # an attacker edits a digest but not the root
    inside.write_text(json.dumps(content))
    assert run_cli("verify", inside, data).returncode == 4


def test_proof_is_checked_alone_and_with_the_file(tmp_path, sealed):
    data, manifest = sealed
    proof = tmp_path / "proof.json"
    run_cli("seal", manifest, "--proof", "p01/b.mte", "-o", proof, check=True)
    alone = run_cli("verify", "--proof", proof, "--json", check=True)
    assert json.loads(alone.stdout)["path"] == "p01/b.mte"
    assert run_cli("verify", "--proof", proof, "--file", data / "p01" / "b.mte").returncode == 0
    assert run_cli("verify", "--proof", proof, "--file", data / "p01" / "a.mte").returncode == 4
    content = json.loads(proof.read_text())
    content["sha256"] = hashlib.sha256(b"forged").hexdigest()
    proof.write_text(json.dumps(content))
    assert run_cli("verify", "--proof", proof).returncode == 4
    assert run_cli("seal", manifest, "--proof", "nope.mte").returncode == 2


def test_hmac_and_ed25519_signed_roots(tmp_path, sealed):
    data, _ = sealed
    from medtools.secure.keystore import generate_key_file, generate_signing_key, read_key_file

    key, other = generate_key_file(tmp_path / "k.key"), generate_key_file(tmp_path / "other.key")
    generate_signing_key(tmp_path / "sign.pem")
    generate_signing_key(tmp_path / "mallory.pem")
    hm, ed = tmp_path / "hmac.json", tmp_path / "ed.json"
    run_cli("seal", data, "-o", hm, "--hmac-key", key, check=True)
    run_cli("seal", data, "-o", ed, "--sign", tmp_path / "sign.pem", check=True)
    assert run_cli("verify", hm, data, "--hmac-key", key).returncode == 0
    assert run_cli("verify", hm, data, "--hmac-key", other).returncode == 4
    assert run_cli("verify", ed, data, "--public-key", tmp_path / "sign.pem.pub").returncode == 0
    assert run_cli("verify", ed, data, "--public-key", tmp_path / "mallory.pem.pub").returncode == 4
    unsigned_check = run_cli("verify", ed, data)
    assert unsigned_check.returncode == 0 and "not checked" in unsigned_check.stderr
    # a re-sealed (attacker) manifest with a valid tree but without the key's signature
    forged = sealing.seal_folder(data, hmac_key=read_key_file(other))
    (tmp_path / "forged.json").write_text(json.dumps(forged.to_json()))
    assert run_cli("verify", tmp_path / "forged.json", data, "--hmac-key", key).returncode == 4


def test_check_proof_rejects_garbage():
    with pytest.raises(IntegrityError):
        sealing.check_proof({"format": "medtools-seal-proof", "path": "a", "sha256": "zz", "index": 0, "tree_size": 1, "audit_path": [], "root": "00"})
    with pytest.raises(IntegrityError):
        sealing.check_proof({"format": "other"})
