"""What the service runs: the checkpoints of --models DIR, loaded once, and the families' functions.

Models: every ``*.safetensors`` in the folder becomes one :class:`medtools.core.predict.Predictor`
(its kind read from the checkpoint metadata), named by the file stem, with its SHA-256.
Anything wrong with the folder or a checkpoint stops start-up with a CheckpointError (exit 3).

Functions: serve is the front end over every family, so it is the one package allowed to
call other families' public functions. It finds them through :func:`family_function` so
that a family that is not installed (cls, index) simply leaves its endpoints out.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtools.core.errors import CheckpointError

# endpoint → (module, public function) of the family that implements it; looked up lazily
FAMILY_FUNCTIONS: dict[str, tuple[str, str]] = {
    "segment": ("medtools.brain.segment", "segment_images"),
    "protect": ("medtools.brain.protect", "protect_images"),
    "protect-models": ("medtools.brain.protect", "load_protect_models"),
    "classify": ("medtools.cls.classify", "Classifier"),  # a loaded cls model: .run(paths) as `classify`
    "index": ("medtools.index.store", "Index"),  # the index manifest (Index.load)
    "index-context": ("medtools.index.he", "load_context"),  # the server's public CKKS context
    "index-score": ("medtools.index.he", "score_block"),  # the server half of `index query`
}

# which model kinds each endpoint serves
ENDPOINT_KINDS: dict[str, tuple[str, ...]] = {"segment": ("seg",), "classify": ("cls",), "protect": ("reid", "cls"), "utility": ("seg",)}


def family_function(endpoint: str) -> Callable[..., Any] | None:
    """The family's public function behind ``endpoint``, or None when that family is absent."""
    module_name, name = FAMILY_FUNCTIONS[endpoint]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):  # the family itself is missing
            return None
        raise
    return getattr(module, name, None)


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

    def describe(self) -> dict[str, Any]:
        info = {"name": self.name, "kind": self.kind, "file": self.path.name, "sha256": self.sha256}
        for key in ("arch", "encoder", "modalities", "image_size", "label_values", "class_names"):
            if key in self.config:
                info[key] = self.config[key]
        info["device"] = str(getattr(self.predictor, "device", ""))
        return info


def load_models(folder: Path | str, *, device: str | None = None, precision: str | None = None) -> dict[str, LoadedModel]:
    """Every checkpoint in ``folder`` as a Predictor (kind from its metadata), by file stem."""
    from medtools.core import registry, report
    from medtools.core.ckpt import read_metadata
    from medtools.core.predict import Predictor
    from medtools.core.report import sha256_file

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"--models {folder}: not a folder of checkpoints")
    paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        raise CheckpointError(f"--models {folder}: no .safetensors checkpoints in it")
    models: dict[str, LoadedModel] = {}
    for path in paths:
        kind = read_metadata(path).get("medtools.kind")
        if not kind:
            raise CheckpointError(f"{path} is not a medtools checkpoint (no medtools.kind in its metadata)")
        if kind == "train-state" or registry.get(kind).builder is None:
            report.log(f"serve: {path.name} is a {kind} file, not a model: skipped")
            continue  # keys, training state
        runner = None
        classifier = family_function("classify") if kind in ENDPOINT_KINDS["classify"] else None
        if classifier is not None:  # the cls family's own wrapper around its Predictor
            runner = classifier(path, device=device, precision=precision)
            predictor = runner.predictor
        else:
            predictor = Predictor(path, kind=kind, device=device, precision=precision)
        name = path.name[: -len(".safetensors")]
        models[name] = LoadedModel(name=name, path=path, kind=kind, sha256=sha256_file(path), predictor=predictor, config=dict(predictor.config), runner=runner)
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


@dataclass
class IndexService:
    """The server half of ``medtools index query``: the index folder and its public context.

    The manifest is re-read per request (``index add`` may grow it while serving); the
    public context is loaded once. The secret context never reaches the server: a context
    holding the secret key is refused at start-up (exit 2), as by ``index build``.
    """

    folder: Path
    context: Any
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, folder: Path | str, public: Path | str) -> "IndexService":
        from medtools.core.errors import UsageError

        index_cls, load_context = family_function("index"), family_function("index-context")
        if index_cls is None or load_context is None:
            raise UsageError("--index needs the index family (medtools.index) and TenSEAL: pip install 'medtools[he]'")
        context = load_context(Path(public), secret=False)
        service = cls(Path(folder), context)
        index = service.index()
        if index.data["key_id"] != context.key_id:
            from medtools.core.errors import IntegrityError

            raise IntegrityError(f"--public {public} is key {context.key_id}, the index {folder} is encrypted for key {index.data['key_id']}")
        return service

    def index(self):
        return family_function("index").load(self.folder)

    def score(self, query: bytes) -> dict[str, Any]:
        """Encrypted scores of every block against an encrypted query (what `index query` sends)."""
        import base64

        score_block = family_function("index-score")
        index = self.index()
        with self.lock:
            replies = [score_block(self.context, index.block_path(b).read_bytes(), query=query) for b in range(len(index.blocks))]
        return {
            "root": index.root,
            "key_id": index.data["key_id"],
            "entries": len(index.entries),
            "blocks": [{"block": b, "count": int(index.blocks[b]["count"]), "scores": base64.b64encode(r).decode()} for b, r in enumerate(replies)],
        }
