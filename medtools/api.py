"""medtools as a Python library: one keyword function per job, in memory.

Images in and out are :class:`medtools.core.io.Image` (an array with its geometry and the
metadata needed to write it back: NIfTI header, DICOM dataset, PNG bit depth); read one with
``read_image(path)`` and write one with ``write_image(image, path)``. Bytes stay bytes. A model
is a checkpoint path or an object this module loaded before (``load_model``), so a program that
calls a function many times loads the model once. Every function takes ``ctx``, a
:class:`medtools.core.context.RunContext` (NaN policy, key-file permissions, quiet, device...);
without it the caller's current context holds. Nothing here keeps state between calls.

The command-line tools and ``medtools serve`` call these same functions; docs/api.md shows a
session. Errors are the typed errors of :mod:`medtools.core.errors` (``InputError``,
``CheckpointError``, ``IntegrityError``, ``UsageError``) with the CLI's one-line messages.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from medtools.core import context as _context
from medtools.core.context import RunContext
from medtools.core.io import Image, read_image, write_image

__all__ = [
    "Image", "RunContext", "read_image", "write_image", "load_model",
    "segment", "protect", "reid_scores", "classify", "explain", "explain_beside",
    "encrypt_bytes", "decrypt_bytes", "encrypt_stream", "decrypt_stream",
    "klt_encode", "umn_map", "klt_decode", "synth", "index_query", "index_score", "index_manifest", "deid_dataset", "clean_pixels", "phi_findings",
    "pacs_query", "pacs_pull", "pacs_push",
    "fl_train", "fl_job", "fl_attack",
]

F = TypeVar("F", bound=Callable[..., Any])
ModelArg = Any  # a checkpoint path (str | Path) or an object from load_model


def _in_context(func: F) -> F:
    """Run ``func`` inside its ``ctx`` keyword (a RunContext), or in the caller's current one."""

    @functools.wraps(func)
    def wrapper(*args: Any, ctx: RunContext | None = None, **kwargs: Any) -> Any:
        with _context.use(ctx):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _device(device: str | None) -> str | None:
    return device if device is not None else _context.current().device


def _precision(precision: str | None) -> str | None:
    return precision if precision is not None else _context.current().precision


def _images(images: Sequence[Any] | Image) -> list[Any]:
    """One Image or a sequence; in-memory arrays obey the context's NaN policy as files do when read."""
    from medtools.core.io.finite import check_finite

    listed = [images] if isinstance(images, Image) else list(images)
    out = []
    for index, image in enumerate(listed):
        if isinstance(image, Image):
            checked = check_finite(image.array, image.meta.get("path", f"image {index}"))
            image = image if checked is image.array else image.with_array(checked)
        out.append(image)
    return out


def _is_loaded(model: ModelArg) -> bool:
    return not isinstance(model, (str, Path))


@_in_context
def load_model(path: str | Path, *, kind: str | Sequence[str] | None = None, key: bytes | None = None, device: str | None = None, precision: str | None = None, batch_size: int = 32) -> Any:
    """A checkpoint loaded once for many calls: a ``Predictor`` (a ``Classifier`` for cls
    checkpoints, with ``key`` for a model trained behind an image cipher)."""
    from medtools.core.ckpt import read_metadata
    from medtools.core.predict import Predictor

    found = read_metadata(path).get("medtools.kind")
    if found == "cls" and (kind is None or kind == "cls" or "cls" in kind):
        from medtools.cls.classify import Classifier

        return Classifier(path, key=key, device=_device(device), precision=_precision(precision), batch_size=batch_size)
    return Predictor(path, kind=kind, device=_device(device), precision=_precision(precision), batch_size=batch_size)


def _predictor(model: ModelArg, kind: str | Sequence[str], **kwargs: Any) -> Any:
    if _is_loaded(model):
        return getattr(model, "predictor", model)
    return load_model(model, kind=kind, **kwargs)


# ---------------------------------------------------------------- brain


@_in_context
def segment(images: Sequence[Image] | Image, model: ModelArg, *, tta: bool = False, keep_largest: bool = False, resample: bool = True, volume: int | None = None, batch_size: int | None = None, device: str | None = None, precision: str | None = None) -> Image:
    """The modality images of one case (the model's modality order) → the label image in the
    first image's geometry and metadata (what ``medtools segment`` writes): mapped into the
    model's training geometry (``resample``: in-plane spacing too) and back; ``volume`` picks
    one volume of a 4-D series."""
    from medtools.brain.segment import segment_images

    images = _images(images)
    predictor = _predictor(model, "seg", device=device, precision=precision)
    return segment_images(images, predictor, batch_size=batch_size, tta=tta, keep_largest=keep_largest, resample=resample, volume=volume)


@_in_context
def protect(images: Sequence[Image] | Image, attackers: ModelArg | Sequence[ModelArg], *, utility: ModelArg | None = None, case_id: str = "case", patient: str = "", key: bytes | None = None, seed: int | None = None, device: str | None = None, **options: Any) -> tuple[list[Image], dict[str, Any]]:
    """Adversarial protection of one case against the re-identification ``attackers`` (and the
    ``utility`` segmenter whose output the noise must keep) → (protected images, metrics).
    ``options`` are ``protect``'s: eps, steps, step_size, objective, utility_weight, ... ``key``
    (32 bytes) keys the signature pattern; default a fresh random key."""
    from medtools.brain.protect import load_protect_models, protect_images

    images = _images(images)
    chosen = [attackers] if isinstance(attackers, (str, Path)) or not isinstance(attackers, Sequence) else list(attackers)
    models = load_protect_models([_predictor(m, ("reid", "cls"), device=device) for m in chosen], _predictor(utility, "seg", device=device) if utility is not None else None)
    seed = seed if seed is not None else (_context.current().seed or 0)
    return protect_images(images, models, case_id=case_id, patient=patient, key=key, seed=seed, **options)


@_in_context
def reid_scores(images: Sequence[Image] | Image, model: ModelArg, *, top: int = 5, device: str | None = None) -> dict[str, Any]:
    """What a re-identification attacker says of one case: its top ``top`` identities with the
    probability averaged over the case's non-empty slices (the attacker's own defences first)."""
    from medtools.brain.reid import case_identities

    images = _images(images)
    return case_identities(images, _predictor(model, ("reid", "cls"), device=device), top=top)


# ---------------------------------------------------------------- classification


@_in_context
def classify(images: Sequence[Image | str | Path] | Image, model: ModelArg, *, key: bytes | None = None, names: Sequence[str] | None = None, device: str | None = None) -> list[dict[str, Any]]:
    """Label and class probabilities per image (plain images, or cipher images for a model
    trained behind a key: ``key`` encrypts plain images on the way in). A per-image problem
    (unreadable, wrong size) is that image's record ``{"path", "error", "exit_code"}``."""
    from medtools.core.batch import error_code, error_message

    if _is_loaded(model):
        classifier = model
    else:
        classifier = load_model(model, kind="cls", key=key, device=device)
    sources = _images(images)
    labels = list(names) if names is not None else [str(s) if not isinstance(s, Image) else str(s.meta.get("path", f"image-{i}")) for i, s in enumerate(sources)]
    records = []
    for name, result in classifier.run(sources, labels):
        if isinstance(result, BaseException):
            records.append({"path": name, "error": error_message(result), "exit_code": error_code(result)})
        else:
            records.append(result)
    return records


# ---------------------------------------------------------------- explain


@_in_context
def explain(images: Sequence[Image] | Image, model: ModelArg, *, method: str = "gradcam", target: str = "pred", layer: str | None = None, mask: Image | None = None, regions: Image | None = None, check: bool = False, key: bytes | None = None, seed: int | None = None, batch_size: int = 16, volume: int | None = None, device: str | None = None) -> tuple[Image, dict[str, Any]]:
    """The saliency map of a seg, cls or reid model for one image or case (a segmenter's modality
    images) → (a float Image on the input's grid, one trailing axis per target when there are
    several; the numbers: per target its localisation, and with ``check`` the model-randomisation
    and faithfulness checks and their flags). ``method``: gradcam | gradcam++ | occlusion | ig;
    ``target``: pred or a class; ``layer``: a module name (default the last conv block);
    ``mask``: a ground-truth label image for localisation; ``regions``: a label image on the
    input's grid (e.g. 0 background, 1 head, 2 tumour) whose labels each get their share of the
    map's mass; ``key``: a cls model's cipher key."""
    from medtools.explain.explain import explain_images

    images = _images(images)
    if _is_loaded(model):
        loaded = model
    else:
        loaded = load_model(model, kind=("seg", "cls", "reid"), key=key, device=device)
    seed = seed if seed is not None else (_context.current().seed or 0)
    return explain_images(images, loaded, method=method, target=target, layer=layer, mask=mask, regions=regions, check=check, seed=seed, batch_size=batch_size, volume=volume)


def check_explain_method(method: str) -> str:
    """``method`` when ``explain`` knows it, else a UsageError naming the choices (checked before
    a batch starts, e.g. by ``segment --explain``)."""
    from medtools.core.errors import UsageError
    from medtools.explain import METHODS

    if method not in METHODS:
        raise UsageError(f"--explain {method!r}: choose from {', '.join(METHODS)}")
    return method


@_in_context
def explain_beside(images: Sequence[Image] | Image, model: ModelArg, folder: str | Path, stem: str, **options: Any) -> tuple[list[Path], dict[str, Any]]:
    """``explain`` (same keywords) and write the map in ``folder`` as ``medtools explain`` names
    and writes it: ``<stem>_<method>.nii.gz`` (float, the first image's geometry) beside a volume,
    ``<stem>_<method>.png`` overlays (one per target) beside a 2-D picture → (written paths, the
    numbers). ``segment --explain`` and ``classify --explain`` call it with their loaded model."""
    from medtools.explain.explain import map_path, write_map

    images = _images(images)
    saliency, numbers = explain(images, model, **options)
    return write_map(images[0], saliency, map_path(folder, stem, options.get("method", "gradcam"), images[0])), numbers


# ---------------------------------------------------------------- secure sharing


def _recipients(store: str | Path | None, key: bytes | None, users: Sequence[str] | None) -> list[Any]:
    from medtools.secure import container
    from medtools.secure.crypt import recipients

    targets = recipients(Path(store), None, users) if store is not None else []
    if key is not None:
        targets.append(container.KeyRecipient(key))
    if not targets:
        from medtools.core.errors import UsageError

        raise UsageError("no recipients: give store= (the doctors' key store) and/or key= (32 bytes)")
    return targets


@_in_context
def encrypt_stream(source: BinaryIO, sink: BinaryIO, *, store: str | Path | None = None, users: Sequence[str] | None = None, key: bytes | None = None, name: str = "", chunk_size: int | None = None) -> dict[str, Any]:
    """Encrypt ``source`` into ``sink`` as an .mte container for the store's doctors (or the
    named ``users``) and/or a 32-byte ``key``; constant memory. Returns recipients, bytes, sha256."""
    from medtools.secure import container

    result = container.encrypt_stream(source, sink, _recipients(store, key, users), name=name, chunk_size=chunk_size or container.DEFAULT_CHUNK, digest=True)
    return {"recipients": result.recipients, "bytes": result.plaintext_bytes, "sha256": result.ciphertext_sha256}


@_in_context
def decrypt_stream(source: BinaryIO, sink: BinaryIO, *, store: str | Path | None = None, user: str | None = None, password: bytes | str | None = None, key: bytes | None = None, identity: Any = None) -> dict[str, Any]:
    """Decrypt an .mte stream with a store user's password, an unlocked ``identity`` or a
    ``key``. Any damage, truncation or wrong credential raises IntegrityError; only
    authenticated chunks reach ``sink`` (discard it on error). Returns name, bytes, sha256."""
    from medtools.secure import container
    from medtools.secure.crypt import Keyring
    from medtools.secure.keystore import KeyStore

    keyring = Keyring(store=KeyStore.load(Path(store)) if store is not None else None, user=user, key=key)
    if password is not None:
        keyring._password = password.encode("utf-8") if isinstance(password, str) else password
    if identity is not None and user is not None:
        keyring._unlocked[user] = identity
    result = container.decrypt_stream(source, sink, keyring.identities, digest=True)
    return {"name": result.name, "bytes": result.plaintext_bytes, "sha256": result.ciphertext_sha256, "opened_by": getattr(result, "opened_by", None)}


@_in_context
def encrypt_bytes(data: bytes, **options: Any) -> bytes:
    """``encrypt_stream`` on bytes: the .mte container's bytes."""
    sink = io.BytesIO()
    encrypt_stream(io.BytesIO(data), sink, **options)
    return sink.getvalue()


@_in_context
def decrypt_bytes(data: bytes, **options: Any) -> bytes:
    """``decrypt_stream`` on bytes: the plaintext (IntegrityError on any damage or wrong credential)."""
    sink = io.BytesIO()
    decrypt_stream(io.BytesIO(data), sink, **options)
    return sink.getvalue()


@_in_context
def deid_dataset(dataset: Any, *, key: bytes | None = None, date_shift: int | None = None, pseudonymize: bool = False, clean_pixels: bool = False, ocr: str | None = None, fill: str | None = None, clean_descriptors: bool = False, allow_burned_in: bool = False, audit: dict[str, Any] | None = None, deidentifier: Any = None) -> tuple[Any, list[str]]:
    """De-identify a pydicom Dataset in place (PS3.15 basic profile; pixels untouched unless
    ``clean_pixels``: OCR'd text filled in every frame, with the background value or, with
    ``fill="inpaint"``, from the surroundings) → (dataset, warnings). ``audit`` (a dict)
    receives what changed. Pass one ``deidentifier`` (``medtools.secure.deid.make_deidentifier``)
    to many calls so that UIDs and pseudonyms stay consistent across a study."""
    from medtools.secure.deid import make_deidentifier

    run = deidentifier or make_deidentifier(key, date_shift=date_shift, pseudonymize=pseudonymize, clean_descriptors=clean_descriptors, allow_burned_in=allow_burned_in)
    pixels = None
    if clean_pixels:
        from medtools.secure.pixels import PixelCleaner

        pixels = PixelCleaner.create(ocr=ocr, fill=fill)
    elif fill is not None:
        from medtools.core.errors import UsageError

        raise UsageError("fill is part of clean_pixels: add clean_pixels=True")
    warnings = run.dicom(dataset, pixels=pixels, audit=audit)
    return dataset, warnings


@_in_context
def clean_pixels(array: Any, *, regions: str | Path | None = None, ocr: str | None = None, fill: str | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Burned-in text of one 2-D image (H×W or H×W×C array) filled with its background value
    (``fill="inpaint"``: from the surrounding pixels, OpenCV Telea) → (cleaned copy, boxes with
    masked text). ``ocr``: rapidocr (default; the deid extra) or tesseract (the executable)."""
    from medtools.secure.pixels import PixelCleaner, clean_image

    return clean_image(array, cleaner=PixelCleaner.create(regions=regions, ocr=ocr, fill=fill))


@_in_context
def phi_findings(dataset: Any, *, pixels: bool = False, ocr: str | None = None) -> list[dict[str, Any]]:
    """What ``phi-scan`` reports for a pydicom Dataset (values masked); empty when clean."""
    from medtools.secure.phi import scan_dicom_tags, scan_pixels

    findings = scan_dicom_tags(dataset)
    if pixels and "PixelData" in dataset:
        from medtools.secure.pixels import PixelCleaner, dicom_frames

        findings += scan_pixels(dicom_frames(dataset)[0], PixelCleaner.create(ocr=ocr, read=True))
    return findings


# ---------------------------------------------------------------- collaborative segmentation


def _klt_key(key: Any) -> Any:
    from medtools.collab import klt

    return key if isinstance(key, klt.Key) else klt.load_key(key)


@_in_context
def klt_encode(images: Sequence[Image], model: ModelArg, key: Any, *, device: str | None = None) -> list[list[Any]]:
    """Client: images (ae-image model) or masks (ae-mask) → protected latents, one list of
    per-scale arrays (C_k, H_k, W_k) per image. ``key``: a klt key file or a loaded key."""
    import numpy as np

    from medtools.collab import klt
    from medtools.collab.autoencoder import load_batch
    from medtools.collab.latents import encode
    from medtools.core.errors import CheckpointError

    predictor = _predictor(model, ("ae-image", "ae-mask"), device=device)
    key = _klt_key(key)
    if list(predictor.config["latent_channels"]) != key.latent_channels:
        raise CheckpointError(f"the key was made for latent channels {key.latent_channels}, the model has {predictor.config['latent_channels']}")
    x = load_batch(list(images), predictor.size, mask=predictor.kind.name == "ae-mask")
    protected = klt.apply(key, encode(predictor, x))
    return [[np.asarray(z[i]) for z in protected] for i in range(len(images))]


@_in_context
def umn_map(latents: Sequence[Sequence[Any]], model: ModelArg, key: Any = None, *, device: str | None = None) -> list[list[Any]]:
    """Server: protected image latents → protected mask latents (a plain-space UMN needs the
    client's ``key``: invert → map → re-apply; a protected-space UMN takes none)."""
    import numpy as np

    from medtools.collab import klt
    from medtools.collab.autoencoder import pack, unpack
    from medtools.core.errors import UsageError

    predictor = _predictor(model, "umn", device=device)
    space = predictor.config.get("space", "plain")
    if space == "plain" and key is None:
        raise UsageError("this UMN maps plain latents: give the client's key")
    if space == "protected" and key is not None:
        raise UsageError("this UMN was trained in the protected space: it takes no key")
    z = [np.stack([np.asarray(sample[k]) for sample in latents]) for k in range(len(latents[0]))]
    loaded_key = _klt_key(key) if key is not None else None
    if loaded_key is not None:
        z = klt.invert(loaded_key, z)
    mapped = unpack(predictor.predict(pack(z).astype(np.float32), model_space=True), predictor.model.out_shapes)
    if loaded_key is not None:
        mapped = klt.apply(loaded_key, mapped)
    return [[m[i] for m in mapped] for i in range(len(latents))]


@_in_context
def klt_decode(latents: Sequence[Sequence[Any]], model: ModelArg, key: Any = None, *, size: tuple[int, int] | None = None, threshold: float = 0.5, device: str | None = None) -> list[Any]:
    """Client: protected (or mapped) latents → uint8 masks (ae-mask: 0/255) or images
    (ae-image), resized to ``size`` (H, W) when given. Without a key: what an eavesdropper decodes."""
    import numpy as np

    from medtools.collab import klt
    from medtools.collab.latents import decode
    from medtools.core import preprocess

    predictor = _predictor(model, ("ae-image", "ae-mask"), device=device)
    z = [np.stack([np.asarray(sample[k]) for sample in latents]) for k in range(len(latents[0]))]
    plain = klt.invert(_klt_key(key), z) if key is not None else z
    out = decode(predictor, plain)
    if size is not None:
        out = preprocess.resize(out, tuple(size))
    prob = out[:, 0]
    if predictor.kind.name == "ae-mask":
        return list(np.where(prob > threshold, 255, 0).astype(np.uint8))
    return list(np.clip(np.round(prob * 255), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- synthesis


@_in_context
def synth(model: str | Path, n: int, *, seed: int | None = None, sampler: str = "ddpm", steps: int | None = None, class_name: str | None = None, guidance: float = 1.0, bits: int = 8, batch_size: int = 16, device: str | None = None) -> Any:
    """``n`` synthetic images from a ddpm checkpoint (a path) as an (n, H, W) uint8 (or uint16)
    array; image i is the same as ``medtools synth --seed SEED`` writes as sample i."""
    from medtools.synth.sample import sample_arrays

    seed = seed if seed is not None else (_context.current().seed or 0)
    return sample_arrays(model, n, seed=seed, sampler=sampler, steps=steps, class_name=class_name, guidance=guidance, bits=bits, batch_size=batch_size, device=_device(device), precision=_context.current().precision)


# ---------------------------------------------------------------- encrypted index


@_in_context
def index_query(image: Image | str | Path, *, index: str | Path, secret: str | Path, k: int = 5, model: str | Path | None = None, root: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Top-k most similar entries of an encrypted index for one image: encrypt the query with
    the secret CKKS context, score on the server half, decrypt, rank and prove each hit
    against the Merkle root (``root``: a trusted root to check, else the index's own)."""
    from medtools.index.store import query

    return query(image, index_folder=Path(index), secret=Path(secret), k=k, model=Path(model) if model else None, root=root, device=_device(device))


@_in_context
def index_score(query: bytes, *, index: str | Path, public: Any, resident: Any = None) -> bytes:
    """Server half of ``index_query``: an encrypted query (``index encrypt-query``'s bytes) →
    every block's encrypted scores, the bytes ``index score`` writes and ``index rank``
    decrypts. ``public``: the index's public CKKS context, a path or a loaded
    ``medtools.index.he.Context``; a context holding the secret key is refused. The index
    manifest is read per call (``index add`` may grow it meanwhile). ``resident``: a
    ``medtools.index.store.Resident`` a long-running server keeps, so blocks are
    deserialised once, not per call."""
    from medtools.index import he
    from medtools.index.store import Index, server_score

    context = public if isinstance(public, he.Context) else he.load_context(Path(public), secret=False)
    return server_score(Index.load(Path(index)), context, query=query, resident=resident)


@_in_context
def index_manifest(index: str | Path) -> dict[str, Any]:
    """The index manifest (entries, block SHA-256s, Merkle root, model): what a client checks
    its hits against."""
    from medtools.index.store import Index

    return Index.load(Path(index)).data


# ---------------------------------------------------------------- similar cases for the doctor's page (serve)


@_in_context
def index_search(image: Image | str | Path, *, index: str | Path, secret: str | Path, k: int = 5, model: str | Path | None = None, root: str | None = None, device: str | None = None) -> dict[str, Any]:
    """``index_query`` with each hit's verification status spelled out: the index is verified
    first (a changed, missing or extra entry is an IntegrityError naming them: nothing is
    ranked), then every hit carries ``verified`` (its inclusion proof checked on its own
    against ``root``, else the index's root), ``checked_against`` and ``proof_hashes``."""
    from medtools.core.errors import IntegrityError
    from medtools.index.store import check_proof

    result = index_query(image, index=index, secret=secret, k=k, model=model, root=root, device=device)
    for hit in result["hits"]:
        try:
            checked = check_proof(hit["proof"], root=root or result["root"])
            hit.update(verified=True, checked_against=checked["root"], reason="")
        except IntegrityError as exc:
            hit.update(verified=False, checked_against=root or result["root"], reason=str(exc))
        hit["proof_hashes"] = len(hit["proof"].get("audit_path", []))
    return result


# ---------------------------------------------------------------- PACS (DICOMweb)


def _pacs(url: str, token: str | None, token_file: str | Path | None, user: str | None, password: str | None, password_file: str | Path | None, ca_file: str | Path | None, timeout: float) -> Any:
    """A connected DICOMweb client for the pacs_* functions (credentials in memory or from files)."""
    from medtools.pacs.client import Connection, connect

    path = lambda value: Path(value) if value is not None else None  # noqa: E731
    return connect(Connection(url=url, token=token, token_file=path(token_file), user=user, password=password, password_file=path(password_file), ca_file=path(ca_file), timeout=timeout))


@_in_context
def pacs_query(url: str, *, patient_id: str | None = None, study_uid: str | None = None, modality: str | None = None, date: str | None = None, limit: int | None = None, token: str | None = None, token_file: str | Path | None = None, user: str | None = None, password: str | None = None, password_file: str | Path | None = None, ca_file: str | Path | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The series of a DICOMweb PACS matching the filters (QIDO-RS), one dict each: study_uid,
    series_uid, patient_id, modality, date, description, instances (what ``pacs query --json``
    prints). ``date``: YYYYMMDD or YYYYMMDD-YYYYMMDD."""
    from medtools.pacs.query import query_series

    client = _pacs(url, token, token_file, user, password, password_file, ca_file, timeout)
    return query_series(client, url, patient_id=patient_id, study_uid=study_uid, modality=modality, date=date, limit=limit)


@_in_context
def pacs_pull(url: str, study_uid: str, *, series_uid: str | Sequence[str] | None = None, token: str | None = None, token_file: str | Path | None = None, user: str | None = None, password: str | None = None, password_file: str | Path | None = None, ca_file: str | Path | None = None, timeout: float = 30.0) -> list[Any]:
    """The instances of a study (or of the given series) as pydicom Datasets, in the transfer
    syntax the PACS holds (WADO-RS). All in memory: for a large study use ``pacs pull``, which
    streams each instance to disk."""
    from medtools.pacs.client import check_uid
    from medtools.pacs.pull import Request, iter_instances

    series = [series_uid] if isinstance(series_uid, str) else list(series_uid or [])
    request = Request(check_uid(study_uid, "study_uid"), tuple(check_uid(s, "series_uid") for s in series))
    client = _pacs(url, token, token_file, user, password, password_file, ca_file, timeout)
    return list(iter_instances(client, url, request))


@_in_context
def pacs_push(url: str, datasets: Sequence[Any], *, batch_size: int = 16, token: str | None = None, token_file: str | Path | None = None, user: str | None = None, password: str | None = None, password_file: str | Path | None = None, ca_file: str | Path | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Store pydicom Datasets in a PACS (STOW-RS, ``batch_size`` per request) → one dict per
    dataset: sop_uid, status ("stored": also when the PACS held it already, or "failed") and
    reason. Authentication failure raises IntegrityError; a PACS that does not answer, RemoteError."""
    from medtools.pacs.push import prepare, store

    client = _pacs(url, token, token_file, user, password, password_file, ca_file, timeout)
    results = []
    for start in range(0, len(datasets), batch_size):
        chunk = [prepare(ds) for ds in datasets[start : start + batch_size]]
        fates = store(client, url, chunk)
        for ds in chunk:
            status, reason = fates.get(str(ds.SOPInstanceUID), ("failed", "not named in the PACS's answer"))
            results.append({"sop_uid": str(ds.SOPInstanceUID), "status": status, "reason": reason})
    return results


# ---------------------------------------------------------------- federated training (NVIDIA FLARE)


@_in_context
def fl_train(kind: str, sites: Sequence[str | Path], output: str | Path, *, rounds: int = 5, local_epochs: int = 1, algorithm: str = "fedavg", mu: float | None = None, dp_epsilon: float | None = None, dp_delta: float = 1e-5, min_sites: int | None = None, timeout: float | None = None, options: Any = None, **trainer: Any) -> dict[str, Any]:
    """Federated training of ``kind`` over site manifests in FLARE's simulator (one client per
    site runs the kind's own trainer; FedAvg/FedProx; DP-SGD per site with ``dp_epsilon``) →
    the summary (rounds, sites, per-round metrics, privacy); the global model is written to
    ``output`` as an ordinary checkpoint. ``options``: a ``TrainOptions`` or a dict of its
    fields (batch_size, lr, seed, device ...); other keywords go to the trainer (size, encoder ...)."""
    from medtools.fl.train import fl_train as run

    return run(kind, sites, Path(output), rounds=rounds, local_epochs=local_epochs, algorithm=algorithm, mu=mu, dp_epsilon=dp_epsilon, dp_delta=dp_delta, min_sites=min_sites, timeout=timeout, options=options, trainer=trainer)


@_in_context
def fl_job(kind: str, sites: Sequence[str | Path], output: str | Path, *, rounds: int = 5, local_epochs: int = 1, algorithm: str = "fedavg", mu: float | None = None, dp_epsilon: float | None = None, dp_delta: float = 1e-5, min_sites: int | None = None, options: Any = None, **trainer: Any) -> dict[str, Any]:
    """The same federated job as a FLARE job folder ``output`` for a real federation (site
    manifest paths as each site sees them) → {"output", "sites", "rounds"}."""
    from medtools.fl.train import fl_job as export

    return export(kind, sites, Path(output), rounds=rounds, local_epochs=local_epochs, algorithm=algorithm, mu=mu, dp_epsilon=dp_epsilon, dp_delta=dp_delta, min_sites=min_sites, options=options, trainer=trainer)


# ---------------------------------------------------------------- federated: attack on an update


@_in_context
def fl_attack(image: Image | str | Path, model: ModelArg | None = None, *, kind: str = "cls", arch: str | None = None, encoder: str | None = None, size: int | None = None, mask: Image | None = None, settings: Any = None, device: str | None = None, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gradient inversion ("Inverting Gradients", Geiping et al. 2020) of one site's update on
    one image (batch 1) of a seg or cls model: a checkpoint path, an ``AttackModel`` from
    ``medtools.fl.attack.prepare_model``, or None for a fresh small model of ``kind``/``arch``.
    → ({"plain": x̂, "dp": x̂ (with ``dp_epsilon``)} as arrays in [0, 1] at the model's size,
    the record: PSNR/SSIM against the true image per arm, the random start's as a baseline, the
    DP noise and ε). ``settings``: an ``AttackSettings``, or its fields as keywords (``steps``,
    ``tv``, ``dp_epsilon``, ``dp_delta``, ``seed``...); ``mask``: a segmenter's label image."""
    from medtools.fl.attack import AttackModel, AttackSettings, attack_image, check_settings, prepare_model

    if settings is None:
        options.setdefault("seed", _context.current().seed or 0)
        settings = AttackSettings(**options)
    elif options:
        raise TypeError(f"give settings or its fields, not both ({', '.join(options)})")
    check_settings(settings)
    target = model if isinstance(model, AttackModel) else prepare_model(model, kind=kind, arch=arch, encoder=encoder, size=size, seed=settings.seed)
    if not isinstance(image, Image):
        image = read_image(image)
    return attack_image(target, _images(image)[0], mask=mask, settings=settings, device=_device(device))
