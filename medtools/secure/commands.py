"""Secure sharing commands: keys, encrypt, decrypt, cipher-audit, seal, verify, deid, phi-scan.

Thin layer: parse flags, call one plain function. Passwords are never flag values: they
come from --password-file, MEDTOOLS_PASSWORD or a terminal prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.core import report
from medtools.cliutil import Inputs, ItemWorkers, Json, Output, Overwrite, Quiet, Shard, command

METHOD_HELP = "aes-gcm (default: authenticated .mte container) | logistic-sine | block | negative | shuffle | median | mean | max | min"

PasswordFile = Annotated[Optional[Path], typer.Option("--password-file", help="Read the password from the first line of this file (else MEDTOOLS_PASSWORD, else a prompt).")]
ScryptLogN = Annotated[Optional[int], typer.Option("--scrypt-log-n", help="scrypt work factor N = 2^n (default 18, or MEDTOOLS_SCRYPT_LOG_N; small values only for tests).")]
StoreArg = Annotated[Path, typer.Argument(help="Key store file (JSON, mode 0600).", show_default=False)]
NameArg = Annotated[str, typer.Argument(help="User name.", show_default=False)]
Method = Annotated[str, typer.Option("--method", "-m", help=METHOD_HELP)]
KeyFile = Annotated[Optional[Path], typer.Option("--key", "--key-file", help="256-bit key file (`medtools keys gen-key FILE`).")]
BlockSize = Annotated[int, typer.Option("--block-size", help="Block size for --method block.", min=1)]
Window = Annotated[int, typer.Option("--window", help="Window size for median/mean/max/min.", min=1)]
AuditLog = Annotated[Optional[Path], typer.Option("--audit-log", help="Append one JSON line per file (time, user, SHA-256, result; never a secret).")]
InsecurePermissions = Annotated[bool, typer.Option("--insecure-permissions", help="Accept a key store or key file that group/others may read or write (refused by default: exit 2).")]
HmacKey = Annotated[Optional[Path], typer.Option("--hmac-key", help="256-bit key file: HMAC-SHA256 of the Merkle root.")]

keys_app = typer.Typer(help="Key stores of doctors (password-protected X25519 keys) and key files.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.command("encrypt")(encrypt)
    app.command("decrypt")(decrypt)
    app.command("cipher-audit")(cipher_audit)
    app.command("seal")(seal)
    app.command("verify")(verify)
    app.command("deid")(deid)
    app.command("phi-scan")(phi_scan)


# ---------------------------------------------------------------- keys


@keys_app.command("init")
@command
def keys_init(store: StoreArg, scrypt_log_n: ScryptLogN = None, overwrite: Overwrite = False, quiet: Quiet = False) -> int:
    """Create an empty key store (mode 0600); add doctors with `keys add-user`."""
    from medtools.secure.keystore import KeyStore

    KeyStore.create(store, log_n=scrypt_log_n, overwrite=overwrite)
    report.emit_path(store)
    return 0


@keys_app.command("add-user")
@command
def keys_add_user(store: StoreArg, name: NameArg, password_file: PasswordFile = None, scrypt_log_n: ScryptLogN = None, insecure_permissions: InsecurePermissions = False, quiet: Quiet = False) -> int:
    """Add a user with a new password (asked twice on a terminal)."""
    from medtools.secure.keystore import KeyStore, read_password

    keystore = KeyStore.load(store)
    password = read_password(password_file=password_file, prompt=f"New password for {name}: ", confirm=True)
    user = keystore.add_user(name, password, log_n=scrypt_log_n)
    report.log(f"added {user.name} (key {user.fingerprint()}); files encrypted from now on include them")
    report.emit_path(store)
    return 0


@keys_app.command("remove")
@command
def keys_remove(store: StoreArg, name: NameArg, insecure_permissions: InsecurePermissions = False, quiet: Quiet = False) -> int:
    """Remove a user: files encrypted after this are not readable with their password."""
    from medtools.secure.keystore import KeyStore

    KeyStore.load(store).remove_user(name)
    report.log(f"removed {name}; files encrypted before keep their stanza (re-encrypt them to revoke)")
    report.emit_path(store)
    return 0


@keys_app.command("list")
@command
def keys_list(store: StoreArg, json_output: Json = False, insecure_permissions: InsecurePermissions = False, quiet: Quiet = False) -> int:
    """User names, one per line (--json: name, created, key fingerprint, scrypt work factor)."""
    from medtools.secure.keystore import KeyStore, render_users

    users = KeyStore.load(store).describe()
    report.emit_result(users, render_users)
    return 0


@keys_app.command("passwd")
@command
def keys_passwd(
    store: StoreArg,
    name: NameArg,
    password_file: PasswordFile = None,
    new_password_file: Annotated[Optional[Path], typer.Option("--new-password-file", help="New password file (else MEDTOOLS_NEW_PASSWORD, else a prompt).")] = None,
    scrypt_log_n: ScryptLogN = None,
    insecure_permissions: InsecurePermissions = False,
    quiet: Quiet = False,
) -> int:
    """Change a user's password; the key pair stays, so existing files stay readable."""
    from medtools.secure.keystore import ENV_NEW_PASSWORD, KeyStore, read_password

    keystore = KeyStore.load(store)
    keystore.user(name)
    old = read_password(password_file=password_file, prompt=f"Current password for {name}: ")
    new = read_password(password_file=new_password_file, env=ENV_NEW_PASSWORD, prompt=f"New password for {name}: ", confirm=True)
    keystore.change_password(name, old, new, log_n=scrypt_log_n)
    report.emit_path(store)
    return 0


@keys_app.command("gen-key")
@command
def keys_gen_key(
    path: Annotated[Path, typer.Argument(help="Key file to write (mode 0600).", show_default=False)],
    ed25519: Annotated[bool, typer.Option("--ed25519", help="Write an Ed25519 signing key (PEM) and PATH.pub instead.")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    """A random 256-bit key (64 hex digits) for --key, --hmac-key and deid --key; or an Ed25519 pair."""
    from medtools.secure.keystore import generate_keys

    report.emit_paths(generate_keys(path, ed25519=ed25519, overwrite=overwrite))
    return 0


# ---------------------------------------------------------------- encrypt / decrypt


@command
def encrypt(
    inputs: Inputs,
    output: Output = None,
    method: Method = "aes-gcm",
    to: Annotated[Optional[Path], typer.Option("--to", "--store", help="Key store: the file key is wrapped for every user in it.")] = None,
    users: Annotated[Optional[list[str]], typer.Option("--user", help="Only these users of the store (repeatable).")] = None,
    key: KeyFile = None,
    block_size: BlockSize = 16,
    window: Window = 5,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="aes-gcm plaintext bytes per authenticated chunk.")] = 1 << 20,
    audit_log: AuditLog = None,
    shard: Shard = None,
    workers: ItemWorkers = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    insecure_permissions: InsecurePermissions = False,
    quiet: Quiet = False,
) -> int:
    """Encrypt files for the doctors of a key store (.mte), or scramble images in place of view.

    `medtools encrypt - --to STORE < in > out.mte` streams stdin to stdout in constant memory.
    Image methods keep a viewable image of the same size and bit depth (JPEG becomes PNG).
    """
    from medtools.secure.crypt import Options
    from medtools.secure.crypt import encrypt as run

    _check_stdio_json(inputs, output, json_output, "encrypted")
    options = Options(method=method, output=output, overwrite=overwrite, block_size=block_size, window=window, chunk_size=chunk_size, audit_log=audit_log, shard=shard, hash_output=json_output, on_result=_printer(json_output))
    return run(inputs, options=options, store=to, key_file=key, users=users)


@command
def decrypt(
    inputs: Inputs,
    output: Output = None,
    method: Method = "aes-gcm",
    store: Annotated[Optional[Path], typer.Option("--store", "--to", help="Key store holding your user.")] = None,
    user: Annotated[Optional[str], typer.Option("--user", help="Your user name (default: try each recipient of the file).")] = None,
    password_file: PasswordFile = None,
    key: KeyFile = None,
    block_size: BlockSize = 16,
    window: Window = 5,
    audit_log: AuditLog = None,
    shard: Shard = None,
    workers: ItemWorkers = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    insecure_permissions: InsecurePermissions = False,
    quiet: Quiet = False,
) -> int:
    """Decrypt .mte files (wrong password or any tampering: exit 4, no output) or undo an image method."""
    from medtools.secure.crypt import Options
    from medtools.secure.crypt import decrypt as run

    _check_stdio_json(inputs, output, json_output, "decrypted")
    options = Options(method=method, output=output, overwrite=overwrite, block_size=block_size, window=window, audit_log=audit_log, shard=shard, on_result=_printer(json_output))
    return run(inputs, options=options, store=store, user=user, key_file=key, password_file=password_file)


def _printer(json_output: bool):
    """Each written file as soon as it is in place: its path, or with --json its JSON line."""
    return report.emit_jsonl if json_output else (lambda result: report.emit_path(result["output"]))


def _check_stdio_json(inputs: list[str], output: Optional[Path], json_output: bool, what: str) -> None:
    from medtools.core.errors import UsageError

    if json_output and output is None and list(inputs) == ["-"]:
        raise UsageError(f"--json needs -o FILE when the {what} stream goes to stdout")


# ---------------------------------------------------------------- cipher-audit


@command
def cipher_audit(
    plain: Annotated[Path, typer.Argument(help="Plain image.", show_default=False)],
    cipher: Annotated[Optional[Path], typer.Argument(help="Its cipher image (default: encrypt PLAIN here).", show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="logistic-sine | block | negative | shuffle | median | mean | max | min")] = "logistic-sine",
    key: KeyFile = None,
    block_size: BlockSize = 16,
    window: Window = 5,
    trials: Annotated[int, typer.Option("--trials", help="One-pixel changes averaged for NPCR/UACI.", min=1)] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the changed pixel positions.")] = 0,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Folder for histogram and correlation PNGs.")] = None,
    known_plaintext: Annotated[Optional[Path], typer.Option("--known-plaintext", help="Block method: learn the key from PLAIN's pair, then decrypt this other image's cipher.")] = None,
    json_output: Json = False,
    insecure_permissions: InsecurePermissions = False,
    quiet: Quiet = False,
) -> int:
    """NPCR/UACI, entropy, adjacent correlation, χ² uniformity, key sensitivity of an image cipher."""
    from medtools.secure.audit import audit_job

    audit_job(plain, cipher, method=method, key_file=key, block_size=block_size, window=window, trials=trials, seed=seed, plots=plots, known_plaintext=known_plaintext)
    return 0


# ---------------------------------------------------------------- seal / verify


@command
def seal(
    target: Annotated[Path, typer.Argument(help="Folder to seal (or, with --proof, the manifest).", show_default=False)],
    output: Output = None,
    hmac_key: HmacKey = None,
    sign: Annotated[Optional[Path], typer.Option("--sign", help="Ed25519 private key (PEM) signing the root.")] = None,
    proof: Annotated[Optional[str], typer.Option("--proof", help="Print the inclusion proof of this file (path relative to the sealed folder); TARGET is the manifest.")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    """SHA-256 Merkle manifest of every file below a folder, optionally signed; or one file's proof."""
    from medtools.secure.seal import seal_job

    return seal_job(target, output, hmac_key=hmac_key, sign=sign, proof=proof, overwrite=overwrite)


@command
def verify(
    manifest: Annotated[Optional[Path], typer.Argument(help="Seal manifest (JSON).", show_default=False)] = None,
    folder: Annotated[Optional[Path], typer.Argument(help="Folder to check against it.", show_default=False)] = None,
    proof: Annotated[Optional[Path], typer.Option("--proof", help="Check this inclusion proof on its own (no manifest or folder needed).")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="With --proof: also check this file's content.")] = None,
    hmac_key: HmacKey = None,
    public_key: Annotated[Optional[Path], typer.Option("--public-key", help="Ed25519 public key (PEM) the root must be signed with.")] = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Check a folder against its seal (changed, missing, extra files) or one proof: exit 4 on any mismatch."""
    from medtools.secure.seal import verify_job

    return verify_job(manifest, folder, proof=proof, file=file, hmac_key=hmac_key, public_key=public_key)


# ---------------------------------------------------------------- deid


@command
def deid(
    inputs: Inputs,
    output: Output = None,
    key: Annotated[Optional[Path], typer.Option("--key", help="256-bit key for the UID/pseudonym mapping (default: random per run).")] = None,
    date_shift: Annotated[Optional[int], typer.Option("--date-shift", help="Keep dates, shifted by this many days (Modified Dates option).")] = None,
    pseudonymize: Annotated[bool, typer.Option("--pseudonymize", help="Replace PatientID/PatientName by a keyed pseudonym instead of emptying them.")] = False,
    mapping: Annotated[Optional[Path], typer.Option("--mapping", help="Write the original→new UID/ID table here (secret, 0600).")] = None,
    clean_pixels: Annotated[bool, typer.Option("--clean-pixels", help="Clean Pixel Data option: fill burned-in text found by OCR with the background value; DICOM (all frames), NIfTI slices, PNG/JPG/TIFF.")] = False,
    ocr: Annotated[Optional[str], typer.Option("--ocr", help="OCR engine of --clean-pixels: rapidocr (default; the deid extra) | tesseract (apt-get install tesseract-ocr).")] = None,
    pixel_regions: Annotated[Optional[Path], typer.Option("--pixel-regions", help="CSV of known text boxes (x,y,width,height[,Manufacturer,ManufacturerModelName,Rows,Columns]) filled as well; needs --clean-pixels.")] = None,
    fill: Annotated[Optional[str], typer.Option("--fill", help="How --clean-pixels fills each text box: background (default; the image's most frequent value, PS3.15 Clean Pixel Data) | inpaint (from the surrounding pixels, OpenCV Telea; no black boxes for a model to see).")] = None,
    clean_descriptors: Annotated[bool, typer.Option("--clean-descriptors", help="Clean Descriptors option: keep StudyDescription, SeriesDescription, ImageComments... with names, IDs and dates replaced.")] = False,
    allow_burned_in: Annotated[bool, typer.Option("--allow-burned-in", help="Accept files whose BurnedInAnnotation is YES without --clean-pixels (else an item error).")] = False,
    audit_csv: Annotated[Optional[Path], typer.Option("--audit-csv", help="Write what changed per file (tags per action, pixel boxes) as CSV.")] = None,
    shard: Shard = None,
    workers: ItemWorkers = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    insecure_permissions: InsecurePermissions = False,
    quiet: Quiet = False,
) -> int:
    """De-identify DICOM (PS3.15 Annex E basic profile; options: clean pixels, clean descriptors, dates) and NIfTI headers."""
    from medtools.secure.deid import deid_files

    return deid_files(
        inputs, output, key_file=key, date_shift=date_shift, pseudonymize=pseudonymize, mapping=mapping, clean_pixels=clean_pixels, ocr=ocr, pixel_regions=pixel_regions, fill=fill,
        clean_descriptors=clean_descriptors, allow_burned_in=allow_burned_in, audit_csv=audit_csv, shard=shard, overwrite=overwrite, workers=workers,
    )


@command
def phi_scan(
    inputs: Inputs,
    no_pixels: Annotated[bool, typer.Option("--no-pixels", help="Check tags and headers only (no OCR of the pixels).")] = False,
    ocr: Annotated[Optional[str], typer.Option("--ocr", help="OCR engine for text in the pixels: rapidocr (default; the deid extra) | tesseract.")] = None,
    shard: Shard = None,
    workers: ItemWorkers = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Check a release before it leaves (read-only): residual PHI tags, private tags, descriptors with names/IDs/dates, text in the pixels; exit 0 clean, 7 not clean."""
    from medtools.secure.deid import phi_scan_files

    return phi_scan_files(inputs, pixels=not no_pixels, ocr=ocr, shard=shard, workers=workers)
