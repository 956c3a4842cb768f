"""The server side: FLARE's FedAvg controller, a deterministic weighted mean, the global checkpoint.

:class:`GlobalModel` is ``nvflare.app_common.workflows.fedavg.FedAvg`` (FedAvg, McMahan et
al. 2017; with ``fedprox_mu`` FLARE sends the FedProx coefficient to the sites, Li et al. 2020)
with three additions:

- aggregation by :class:`SiteMean`: the mean of the sites' weights weighted by their number of
  training items, summed in site-name order in float64, so the same updates give the same
  global model bit for bit whatever order they arrive in (FLARE's streaming mean adds in arrival
  order);
- after the last round one ``validate`` task: every site scores the final global model on its
  validation split;
- the final global model written as an ordinary medtools checkpoint of the sites' kind
  (``core.ckpt``: ``segment``, ``classify`` and ``serve`` load it unchanged) in the job's run
  folder, with the rounds, the site ids, the per-round metrics and the privacy spent. It is
  written once, at the end, atomically; a failed or aborted job leaves none.
"""

from __future__ import annotations

import json
import os
from typing import Any

from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.workflows.fedavg import FedAvg

OUTPUT_NAME = "global.safetensors"


class SiteMean(ModelAggregator):
    """Weighted mean of full weights by ``meta["n_train"]``, in site order, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.received: dict[str, FLModel] = {}

    def accept_model(self, model: FLModel) -> None:
        site = str((model.meta or {}).get("site", len(self.received)))
        self.received[site] = model

    def aggregate_model(self) -> FLModel:
        import numpy as np

        sites = sorted(self.received)
        weights = [float(self.received[s].meta.get("n_train", 1)) for s in sites]
        total = sum(weights)
        first = self.received[sites[0]].params
        params = {}
        for key in first:
            acc = np.zeros(np.shape(first[key]), dtype=np.float64)
            for site, weight in zip(sites, weights):
                acc += (weight / total) * np.asarray(self.received[site].params[key], dtype=np.float64)
            dtype = np.asarray(first[key]).dtype
            params[key] = np.rint(acc).astype(dtype) if np.issubdtype(dtype, np.integer) else acc.astype(dtype)
        return FLModel(params=params, metrics=None, meta={"sites": {s: dict(self.received[s].meta or {}) for s in sites}, "site_metrics": {s: dict(self.received[s].metrics or {}) for s in sites}})

    def reset_stats(self) -> None:
        self.received = {}


class GlobalModel(FedAvg):
    """FedAvg/FedProx over the sites; writes ``output_name`` (a medtools checkpoint) at the end."""

    def __init__(self, num_clients: int = 3, num_rounds: int = 2, fedprox_mu: float | None = None, output_name: str = OUTPUT_NAME, algorithm: str = "fedavg", settings: dict | None = None) -> None:
        super().__init__(num_clients=num_clients, num_rounds=num_rounds, fedprox_mu=fedprox_mu, aggregator=SiteMean(), persistor_id="", save_filename=None, model={})
        self.output_name = output_name
        self.algorithm = algorithm
        self.settings = settings or {}
        self._rounds: list[dict[str, Any]] = []
        self._final: FLModel | None = None
        self._description: dict[str, Any] | None = None
        self._privacy: dict[str, Any] = {}

    def save_model(self, model: FLModel) -> None:  # called by FedAvg after every round
        meta = model.meta or {}
        sites = meta.get("sites") or {}
        record: dict[str, Any] = {"round": int(self.current_round) + 1, "sites": meta.get("site_metrics") or {}}
        descriptions = {s: m.get("description") for s, m in sites.items()}
        if len(set(descriptions.values())) > 1:
            self.system_panic(f"the sites built different models (config/normalisation differ): {json.dumps(descriptions)[:400]}", self.fl_ctx)
            return
        if descriptions:
            self._description = json.loads(next(iter(descriptions.values())))
        dp = {s: json.loads(m["dp"]) for s, m in sites.items() if m.get("dp")}
        if dp:
            self._privacy = dp
            record["epsilon"] = {s: d["epsilon"] for s, d in dp.items()}
        record["n_train"] = {s: m.get("n_train") for s, m in sites.items()}
        self._rounds.append(record)
        self._final = FLModel(params=model.params)

    def run(self) -> None:
        super().run()
        if self._final is None or self.abort_signal.triggered or len(self._rounds) < self.num_rounds:
            return
        results = self.send_model_and_wait(task_name="validate", data=FLModel(params=self._final.params))
        final_metrics = {}
        for result in results:
            site = (result.meta or {}).get("site")
            if site is not None:
                final_metrics[str(site)] = dict(result.metrics or {})
        self._write(final_metrics)

    def _write(self, final_metrics: dict[str, dict[str, float]]) -> None:
        import torch

        from medtools.core import ckpt

        if self._description is None:
            self.system_panic("no site described its model", self.fl_ctx)
            return
        sites = sorted({s for r in self._rounds for s in r["sites"]})
        provenance = {
            "federated": {
                "engine": "nvflare",
                "algorithm": self.algorithm,
                "fedprox_mu": self.fedprox_mu,
                "rounds": len(self._rounds),
                "sites": sites,
                "history": self._rounds,
                "final": final_metrics,
                **self.settings,
            },
            "epochs": len(self._rounds) * int(self.settings.get("local_epochs", 1)),
        }
        if self._privacy:
            provenance["dp"] = {"per_site": self._privacy, "epsilon": max(d["epsilon"] for d in self._privacy.values()), "delta": next(iter(self._privacy.values()))["delta"]}
        keys = [k for k in final_metrics.get(sites[0], {}) if k.startswith("global_")] if sites else []
        if keys:
            provenance["federated"]["final_mean"] = {k[len("global_"):]: sum(final_metrics[s].get(k, 0.0) for s in final_metrics) / len(final_metrics) for k in keys}
        path = os.path.join(self.get_run_dir(), self.output_name)
        weights = {k: torch.as_tensor(v) for k, v in self._final.params.items()}
        d = self._description
        ckpt.save(path, weights, kind=d["kind"], config=d["config"], norm=d["norm"], provenance=provenance)
        self.info(f"global model written to {path}")
