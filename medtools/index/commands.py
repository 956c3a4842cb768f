"""Encrypted, verifiable feature index: index keygen / build / add / query / verify.

Who runs what (docs/index.md): the client (doctor, hospital) holds ``ctx/secret``; the
server holds ``ctx/public`` and ``INDEX/``. ``keygen``, ``encrypt-query`` and ``rank`` run
at the client, ``score`` at the server; ``query`` is the three in one process;
``build``/``add`` take only the public context (the hospital or the server may run them);
``verify`` needs nothing secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medtools.cliutil import BatchSize, Device, Inputs, Json, Model, Overwrite, Quiet, command
from medtools.core import report

index_app = typer.Typer(help="Homomorphically encrypted (CKKS), Merkle-verified feature index: encrypted top-k queries.", no_args_is_help=True)

IndexDir = Annotated[Path, typer.Option("-i", "--index", help="Index folder (holds index.json and blocks/).")]
PublicCtx = Annotated[Path, typer.Option("--public", help="Public CKKS context (ctx/public): server side, no secret key.")]
TrustedRoot = Annotated[Optional[str], typer.Option("--root", help="Merkle root you trust (hex, from build/add/verify --json): the index must be it or an append-only extension of it.")]


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")


def _emit(result: dict, json_output: bool, record: report.RunRecord, paths: list) -> None:
    if json_output:
        report.emit_json({**result, "run": record.as_dict()})
    else:
        for path in paths:
            report.emit_path(path)


@index_app.command("keygen")
@command
def keygen(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for `secret` (client, 0600) and `public` (server).")],
    preset: Annotated[str, typer.Option("--preset", help="n8192-1p (default: N=8192, 120-bit modulus, one data prime; scores to ~5e-5) | n8192 (160 bits, two data primes: twice the work, scores to ~1e-8) | n4096 (109 bits); all 128-bit secure.")] = "n8192-1p",
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """CKKS key pair at 128-bit security: ctx/secret stays with the client, ctx/public goes to the server."""
    from medtools.index.he import keygen as run

    result = run(output, preset=preset, overwrite=overwrite)
    report.log(f"CKKS key {result['key_id']}: N={result['params']['poly_modulus_degree']}, modulus {result['params']['coeff_bits']} bits; keep {result['secret']} private")
    _emit(result, json_output, report.RunRecord(), [result["secret"], result["public"]])
    return 0


@index_app.command("build")
@command
def build(
    inputs: Inputs,
    model: Model,
    public: PublicCtx,
    output: Annotated[Path, typer.Option("-o", "--output", help="Index folder to create.")],
    packing: Annotated[str, typer.Option("--packing", help="diagonal (default: the query is 8 ciphertexts, 1 MB) | column (one query ciphertext per feature dimension, 67 MB at D = 512; kept for comparison). `add` keeps the index's packing.")] = "diagonal",
    device: Device = None,
    batch_size: BatchSize = None,
    overwrite: Overwrite = False,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Embed images with a seg/reid/cls model, encrypt the features packed (public key only), commit a Merkle root."""
    from medtools.core.inputs import expand_inputs
    from medtools.index.store import build as run

    record = report.RunRecord()
    record.add_checkpoint(model)
    result = run(expand_inputs(inputs, output=output), model=model, public=public, output=output, packing=packing, device=device, batch_size=batch_size or 32, overwrite=overwrite)
    outcome = result.pop("outcome")
    report.log(f"index of {result['entries']} entries, root {result['root']}")
    _emit({**result, "failed": outcome.failed}, json_output, record, [result["index"], *result["blocks"]])
    return outcome.exit_code


@index_app.command("add")
@command
def add(
    inputs: Inputs,
    index: IndexDir,
    public: PublicCtx,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="Checkpoint (default: the one recorded in the index; it must be the same model).")] = None,
    device: Device = None,
    batch_size: BatchSize = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Append images as new encrypted blocks; the new root extends the old one (consistency proof in --json)."""
    from medtools.core.inputs import expand_inputs
    from medtools.index.store import add as run

    record = report.RunRecord()
    result = run(expand_inputs(inputs), index_folder=index, public=public, model=model, device=device, batch_size=batch_size or 32)
    outcome = result.pop("outcome")
    report.log(f"added {result['entries']} entries; root {result['root']}")
    _emit({**result, "failed": outcome.failed, "skipped": outcome.skipped}, json_output, record, [result["index"], *result["blocks"]])
    return outcome.exit_code


@index_app.command("query")
@command
def query(
    image: Annotated[Path, typer.Argument(help="Query image.", show_default=False)],
    index: IndexDir,
    secret: Annotated[Path, typer.Option("--secret", help="Your secret CKKS context (ctx/secret).")],
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="Number of entries to return.")] = 5,
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="Checkpoint (default: the one recorded in the index).")] = None,
    plain_query: Annotated[bool, typer.Option("--plain-query", help="Send the query vector in the clear (faster; the server sees it). Stored features stay encrypted.")] = False,
    root: TrustedRoot = None,
    device: Device = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Encrypted top-k: the query is encrypted here, scored under encryption, decrypted here; hits come with Merkle proofs."""
    from medtools.index.store import query as run

    from medtools.index.store import render_hits

    result = run(image, index_folder=index, secret=secret, k=k, model=model, plain_query=plain_query, root=root, device=device)
    report.emit_result(result, render_hits, record=report.RunRecord(device=result["model"]["device"]))
    return 0


@index_app.command("encrypt-query")
@command
def encrypt_query(
    image: Annotated[Path, typer.Argument(help="Query image.", show_default=False)],
    index: IndexDir,
    secret: Annotated[Path, typer.Option("--secret", help="Your secret CKKS context (ctx/secret).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Encrypted query file to send to the server.")],
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="Checkpoint (default: the one recorded in the index).")] = None,
    root: TrustedRoot = None,
    device: Device = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    """Client, step 1 of 3: encrypt an image's features for `index score` (the secret key stays here)."""
    from medtools.index.store import encrypt_query_file

    result = encrypt_query_file(image, index_folder=index, secret=secret, output=output, model=model, root=root, device=device, overwrite=overwrite)
    report.log(f"encrypted query: {result['bytes'] / 1e6:.1f} MB")
    report.emit_path(result["output"])
    return 0


@index_app.command("score")
@command
def score(
    query_file: Annotated[Path, typer.Argument(help="Encrypted query (from `index encrypt-query`).", show_default=False)],
    index: IndexDir,
    public: PublicCtx,
    output: Annotated[Path, typer.Option("-o", "--output", help="Encrypted scores to send back to the client.")],
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> int:
    """Server, step 2 of 3: score every entry under encryption with the public context; it learns nothing."""
    from medtools.index.store import score_file

    report.emit_path(score_file(query_file, index_folder=index, public=public, output=output, overwrite=overwrite)["output"])
    return 0


@index_app.command("rank")
@command
def rank(
    scores: Annotated[Path, typer.Argument(help="Encrypted scores (from `index score`).", show_default=False)],
    index: IndexDir,
    secret: Annotated[Path, typer.Option("--secret", help="Your secret CKKS context (ctx/secret).")],
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="Number of entries to return.")] = 5,
    root: TrustedRoot = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Client, step 3 of 3: decrypt the scores, print the top-k and check their Merkle proofs."""
    from medtools.index.store import rank_file

    from medtools.index.store import render_hits

    report.emit_result(rank_file(scores, index_folder=index, secret=secret, k=k, root=root), render_hits, record=report.RunRecord())
    return 0


@index_app.command("verify")
@command
def verify(
    index: Annotated[Optional[Path], typer.Argument(help="Index folder.", show_default=False)] = None,
    root: TrustedRoot = None,
    proof: Annotated[Optional[Path], typer.Option("--proof", help="Check an inclusion proof on its own: a proof JSON or a `query --json` output (all its hits).")] = None,
    json_output: Json = False,
    quiet: Quiet = False,
) -> int:
    """Recompute block digests and the Merkle tree: any changed, missing or extra entry exits 4 naming it."""
    from medtools.index.store import verify_job

    return verify_job(index, root=root, proof=proof)
