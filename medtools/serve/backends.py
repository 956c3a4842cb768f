"""What the service runs: the checkpoints of --models DIR, loaded once, and the encrypted index.

Models: every ``*.safetensors`` in the folder is loaded once with :func:`medtools.api.load_model`
(its kind read from the checkpoint metadata: a ``Predictor``, or the cls family's
``Classifier``), named by the file stem, with its SHA-256. Anything wrong with the folder or a
checkpoint stops start-up with a CheckpointError (exit 3). The routers hand these loaded
objects to the :mod:`medtools.api` functions, so no request loads a model.

A family that is not installed (cls, index) leaves its endpoints out: :func:`has_family`.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtools.core.errors import CheckpointError

# which model kinds each endpoint serves
ENDPOINT_KINDS: dict[str, tuple[str, ...]] = {"segment": ("seg",), "classify": ("cls",), "protect": ("reid", "cls"), "utility": ("seg",), "explain": ("seg", "cls", "reid")}


def has_family(module: str) -> bool:
    """True when the family module (e.g. ``medtools.cls.classify``) is installed."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


@dataclass
class LoadedModel:
    """One checkpoint of the models folder, loaded once; ``lock`` serialises its requests."""

    name: str
    path: Path
    kind: str
    sha256: str
    predictor: Any
    config: dict[str, Any]
    runner: Any = None  # the family's loaded-model object when it has one (cls: Classifier)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> Any:
        """What the :mod:`medtools.api` functions take as a loaded model."""
        return self.runner if self.runner is not None else self.predictor

    def describe(self) -> dict[str, Any]:
        info = {"name": self.name, "kind": self.kind, "file": self.path.name, "sha256": self.sha256}
        for key in ("arch", "encoder", "modalities", "image_size", "label_values", "class_names", "encryption", "block_size", "key_id"):
            if key in self.config:
                info[key] = self.config[key]
        info["device"] = str(getattr(self.predictor, "device", ""))
        return info


def load_models(folder: Path | str, *, device: str | None = None, precision: str | None = None, allow_identifying: bool = False) -> dict[str, LoadedModel]:
    """Every checkpoint in ``folder``, loaded once (kind from its metadata), by file stem.

    A model whose metadata names its training data (case/patient ids in the clear, file paths:
    ``core.ids.reveals``) is refused (CheckpointError, exit 3) unless ``allow_identifying``: a
    served model would tell every user who it was trained on."""
    from medtools import api
    from medtools.core import registry, report
    from medtools.core.ckpt import read_metadata
    from medtools.core.ids import reveals, summary
    from medtools.core.report import sha256_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"--models {folder}: not a folder of checkpoints")
    paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        raise CheckpointError(f"--models {folder}: no .safetensors checkpoints in it")
    models: dict[str, LoadedModel] = {}
    for path in paths:
        metadata = read_metadata(path)
        kind = metadata.get("medtools.kind")
        if not kind:
            raise CheckpointError(f"{path} is not a medtools checkpoint (no medtools.kind in its metadata)")
        if kind == "train-state" or registry.get(kind).builder is None:
            report.log(f"serve: {path.name} is a {kind} file, not a model: skipped")
            continue  # keys, training state
        found = reveals(metadata)
        if found["identifying"] and not allow_identifying:
            raise CheckpointError(f"{path} names its training data ({summary(found)}): serve a copy made by `medtools ckpt strip {path} -o STRIPPED`, or pass --allow-identifying-checkpoints")
        loaded = api.load_model(path, kind=kind, device=device, precision=precision)
        predictor = getattr(loaded, "predictor", loaded)
        name = path.name[: -len(".safetensors")]
        models[name] = LoadedModel(name=name, path=path, kind=kind, sha256=sha256_file(path), predictor=predictor, config=dict(predictor.config), runner=loaded if loaded is not predictor else None)
    return models


def pick_model(models: dict[str, LoadedModel], endpoint: str, name: str | None) -> LoadedModel:
    """The model named ``name`` (or the only/first one of the endpoint's kinds)."""
    from medtools.core.errors import UsageError

    kinds = ENDPOINT_KINDS[endpoint]
    fitting = [m for m in models.values() if m.kind in kinds]
    if name is not None:
        model = models.get(name)
        if model is None or model.kind not in kinds:
            choices = ", ".join(m.name for m in fitting) or "none loaded"
            raise UsageError(f"no {'/'.join(kinds)} model {name!r} (loaded: {choices})")
        return model
    if not fitting:
        raise UsageError(f"no {'/'.join(kinds)} model is loaded (start serve with a --models folder holding one)")
    return fitting[0]


@dataclass(frozen=True)
class PacsService:
    """The PACS the page opens studies from (DICOMweb, ``--pacs URL``), with the service's own
    account (``--pacs-user``/``--pacs-password-file`` or ``--pacs-token-file``; the credentials are
    read from their files per request, never sent to the page). The routers call
    :func:`medtools.api.pacs_query` and :func:`medtools.api.pacs_pull` with :meth:`options`."""

    url: str
    user: str | None = None
    password_file: Path | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 30.0

    def options(self) -> dict[str, Any]:
        return {"user": self.user, "password_file": self.password_file, "token_file": self.token_file, "ca_file": self.ca_file, "timeout": self.timeout}


@dataclass
class IndexService:
    """The server half of ``medtools index query``: the index folder and its public context.

    The manifest is re-read per request (``index add`` may grow it while serving); the
    public context and the blocks are loaded once (``resident``; a block ``add`` writes is
    loaded by the first request that sees it). The secret context never reaches the server: a context
    holding the secret key is refused at start-up (exit 2), as by ``index build``. Scoring is
    :func:`medtools.api.index_score` (what ``index score`` runs), one request at a time.
    With ``--index-secret`` the service also holds the secret context, so the page can search by
    image (:func:`medtools.api.index_search`): the service then sees the query image and the
    scores, as the client of ``index query`` does; the hits' proofs are checked as there.
    """

    folder: Path
    context: Any
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    resident: Any = None  # medtools.index.store.Resident: blocks deserialised once, kept
    secret: Path | None = None  # --index-secret: the service searches for the page (it then sees the query)

    @classmethod
    def open(cls, folder: Path | str, public: Path | str, secret: Path | str | None = None) -> "IndexService":
        from medtools.core.errors import IntegrityError, UsageError

        if not has_family("medtools.index.store"):
            raise UsageError("--index needs the index family (medtools.index) and TenSEAL: pip install 'medtools[he]'")
        from medtools import api
        from medtools.index.he import load_context

        from medtools.index.store import Index, Resident

        context = load_context(Path(public), secret=False)
        service = cls(Path(folder), context, resident=Resident())
        key_id = api.index_manifest(service.folder)["key_id"]
        if key_id != context.key_id:
            raise IntegrityError(f"--public {public} is key {context.key_id}, the index {folder} is encrypted for key {key_id}")
        service.resident.blocks(Index.load(service.folder), context)  # loaded at start, not by the first query
        if secret is not None:  # the key is checked now, not by the first search
            held = load_context(Path(secret), secret=True)
            if held.key_id != key_id:
                raise IntegrityError(f"--index-secret {secret} is key {held.key_id}, the index {folder} is encrypted for key {key_id}")
            service.secret = Path(secret)
        return service

    @staticmethod
    def reply_json(reply: bytes) -> dict[str, Any]:
        """``index score``'s reply bytes as JSON: its root and key id, and each block's encrypted
        scores (base64, what ``medtools.index.he.decrypt_scores`` takes) with its entry count."""
        import base64

        from medtools.index import he
        from medtools.index.store import REPLY_MAGIC

        header, parts = he.unpack(reply, REPLY_MAGIC, "encrypted score reply")
        counts = [int(he.unpack(part, he.SCORES_MAGIC, "encrypted score block")[0]["count"]) for part in parts]
        return {
            "root": header["root"],
            "key_id": header["key_id"],
            "entries": sum(counts),
            "blocks": [{"block": b, "count": count, "scores": base64.b64encode(part).decode()} for b, (count, part) in enumerate(zip(counts, parts))],
        }
