"""DDP smoke test: `torchrun` with 2 CPU processes (gloo) trains through core.train.fit, and
every rank has torn down its process group when fit returns (a group or a DDP reducer left to
the interpreter's exit made rank 1 abort there now and then: "terminate called without an
active exception", SIGABRT, torchrun exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    from medtools.core import ckpt
    from medtools.core.registry import register_kind
    from medtools.core.train import TrainSpec, fit

    register_kind("test", family="tests", builder="torch.nn:Linear", builder_keys=("in_features", "out_features"))

    out = Path(sys.argv[1])
    torch.manual_seed(0)  # same initial weights on every rank, as DDP expects
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=generator)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())

    def step(model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    spec = TrainSpec(output=out / "model.safetensors", kind="test", config={"in_features": 4, "out_features": 2},
                     epochs=2, batch_size=8, lr=0.05, seed=0)
    result = fit(torch.nn.Linear(4, 2), data, step, spec)
    result["group_left"] = torch.distributed.is_initialized()
    (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))
    """
)


def test_torchrun_two_cpu_processes_write_one_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDTOOLS_DEVICE": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:
        assert result["world_size"] == 2 and result["device"] == "cpu"
        assert result["group_left"] is False  # torn down by fit, not left to the interpreter's exit
        assert [h["epoch"] for h in result["history"]] == [1, 2]
    # one checkpoint (+ its training state), written by rank 0 only, with no leftovers
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".json")) == ["model.safetensors", "model.train-state.safetensors"]
    from medtools.core import ckpt

    model = ckpt.build_model(ckpt.load(out / "model.safetensors", kind="test"))
    assert tuple(model.weight.shape) == (2, 4)
    # each rank saw half of the 64 items per epoch: 4 batches of 8
    assert ckpt.load(out / "model.train-state.safetensors", kind="train-state").config["epoch"] == 2
