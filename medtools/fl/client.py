"""One site of a federated run: FLARE's Client API around the kind's own trainer.

FLARE runs this file at each site (``ScriptRunner``, in the client's job process). It calls
the trainer the kind registered (``seg`` → ``medtools.brain.segment:train_segmenter``, the
function ``seg-train`` calls) on the site's manifest, with the command's options, and hands
it :class:`SiteLoop` in place of ``core.train.fit``. The trainer loads the site's data and
builds model, step and validation once; the loop then serves FLARE's tasks:

- ``train``: load the global weights (round 0: none yet, every site builds the same seeded
  initial model), validate them on the site's validation split, run ``fit`` for
  ``local_epochs`` epochs (FedProx: plus the proximal term ``mu/2·‖w − w_global‖²``, FLARE's
  ``PTFedProxLoss``, ``mu`` from the server's round metadata; DP: Opacus DP-SGD, ``dp.py``),
  send the new weights with the number of training items (the FedAvg weight), the metrics,
  the model config and the privacy spent;
- ``validate``: validate the weights received and send the metrics.

Only weights, metrics, item counts and the model description leave the site.
Each round's random streams are derived from (seed, site, round), so a run is reproducible.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

from medtools.core.train import derive_seed


def _numpy_state(model: Any) -> dict[str, Any]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _load_state(model: Any, params: dict[str, Any]) -> None:
    import torch

    model.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


class SiteLoop:
    """``fit``'s signature; serves FLARE tasks until the server ends the job."""

    def __init__(self, *, site: str, local_epochs: int, dp: dict[str, Any] | None, flare: Any):
        self.site, self.local_epochs, self.dp, self.flare = site, local_epochs, dp, flare

    def __call__(self, model: Any, train_set: Any, step: Any, spec: Any, *, validate: Any = None, batch_sampler: Any = None, streams: Any = None, **fit_kwargs: Any) -> dict[str, Any]:
        import torch
        from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
        from nvflare.app_common.utils.fedprox_utils import get_fedprox_mu

        from medtools.core import ckpt
        from medtools.core.train import fit

        flare = self.flare
        accountant = None
        if self.dp is not None:
            from medtools.fl.dp import SiteDP

            accountant = SiteDP(**self.dp)
        description = {"kind": spec.kind, "config": spec.config, "norm": spec.norm}
        rounds_done = 0
        with tempfile.TemporaryDirectory(prefix="medtools-fl-") as scratch:
            while flare.is_running():
                incoming = flare.receive()
                if incoming is None:
                    break
                if incoming.params:
                    _load_state(model, incoming.params)
                round_index = int(incoming.current_round or 0)
                metrics: dict[str, float] = {}
                if validate is not None:
                    model.eval()
                    with torch.no_grad():
                        metrics = {f"global_{k}": v for k, v in _metrics(validate(model)).items()}
                if flare.is_evaluate():
                    flare.send(FLModel(params={}, metrics=metrics, meta={"site": self.site, "n_train": len(train_set)}))
                    continue
                global_model = copy.deepcopy(model)
                for p in global_model.parameters():
                    p.requires_grad_(False)
                local_step = step
                mu = get_fedprox_mu(incoming) if "fedprox_mu" in (incoming.meta or {}) else None
                if mu is not None:
                    from nvflare.app_opt.pt.fedproxloss import PTFedProxLoss

                    proximal = PTFedProxLoss(mu=mu)

                    def proximal_step(net: Any, batch: Any, _step: Any = step) -> Any:
                        module = getattr(net, "_module", net)  # Opacus wraps the model
                        return _step(net, batch) + proximal(module, global_model)

                    local_step = proximal_step

                seed = derive_seed(spec.seed, "fl", self.site, round_index)
                if streams is not None:
                    streams.seed = seed
                if batch_sampler is not None and hasattr(batch_sampler, "seed"):
                    batch_sampler.seed = seed
                local_spec = spec.replace(epochs=self.local_epochs, seed=seed, output=Path(scratch) / "local.safetensors", keep_best=False, resume=False, keep_ids=False, id_key=None)
                extra = {}
                if accountant is not None:
                    local_spec = local_spec.replace(precision="fp32", precise_bn_batches=0)
                    extra = {"prepare": accountant.prepare, "after_epoch": accountant.after_epoch}
                trained = copy.deepcopy(model)
                trained.train()
                result = fit(trained, train_set, local_step, local_spec, validate=validate, batch_sampler=None if accountant is not None else batch_sampler, streams=streams, **fit_kwargs, **extra)
                local = ckpt.load(local_spec.output)
                params = {k: v.numpy() for k, v in local.tensors.items()}
                _load_state(model, params)
                final = result.get("final", {})
                metrics.update({f"local_{k}": v for k, v in _metrics(final).items() if k != "epoch"})
                meta = {"site": self.site, "n_train": len(train_set), "description": json.dumps(description, sort_keys=True)}
                if accountant is not None:
                    meta["dp"] = json.dumps(accountant.spent())
                flare.send(FLModel(params=params, params_type=ParamsType.FULL, metrics=metrics, meta=meta))
                rounds_done += 1
        return {"rounds": rounds_done, "site": self.site}


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare

    from medtools.core import registry
    from medtools.core.context import RunContext, use
    from medtools.core.train import TrainOptions

    parser = argparse.ArgumentParser(description="medtools federated site (run by NVIDIA FLARE)")
    parser.add_argument("--kind", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--settings", required=True, help="URL-safe base64 of JSON: trainer keywords, shared training options, local epochs, DP")
    args = parser.parse_args(argv)
    settings = json.loads(base64.urlsafe_b64decode(args.settings.encode()))
    flare.init()
    site = flare.get_site_name()
    trainer = registry.resolve(registry.get(args.kind).trainer)
    options = TrainOptions(**settings["options"])
    loop = SiteLoop(site=site, local_epochs=int(settings["local_epochs"]), dp=settings.get("dp"), flare=flare)
    with use(RunContext(quiet=bool(settings.get("quiet", True)))):
        with tempfile.TemporaryDirectory(prefix="medtools-fl-") as scratch:
            trainer(Path(args.manifest), Path(scratch) / "site.safetensors", options=options, loop=loop, **settings["trainer"])


if __name__ == "__main__":
    main()
