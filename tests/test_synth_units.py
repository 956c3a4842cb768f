"""Synthesis family, unit level: configs, samplers, key conversion, ROC metrics, DP per-sample gradients."""

from __future__ import annotations

import numpy as np
import pytest

from medtools.core.errors import InputError, UsageError


def test_unet_config_levels_and_attention():
    from medtools.synth.models import unet_config

    config = unet_config(size=32, widths=(16, 32), attention=(1,), layers_per_block=1)
    assert config["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D"]
    assert config["up_block_types"] == ["AttnUpBlock2D", "UpBlock2D"]
    assert config["block_out_channels"] == [16, 32] and config["sample_size"] == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"widths": (16, 32), "attention": (2,)}, "out of range"),
        ({"widths": (12, 32), "attention": (), "norm_groups": 8}, "must divide"),
        ({"size": 30, "widths": (16, 32, 64), "attention": ()}, "divisible by 4"),
        ({"channels": 2}, "--channels"),
    ],
)
def test_unet_config_rejects_bad_values(kwargs, message):
    from medtools.synth.models import unet_config

    with pytest.raises(UsageError, match=message):
        unet_config(**kwargs)


def test_samplers_share_the_training_schedule():
    from medtools.synth.schedule import SAMPLERS, default_steps, make_sampler, scheduler_config

    config = scheduler_config(timesteps=1000, beta_schedule="squaredcos_cap_v2")
    for name in SAMPLERS:
        sampler = make_sampler(name, config)
        assert sampler.config.num_train_timesteps == 1000
        assert sampler.config.beta_schedule == "squaredcos_cap_v2"
    assert (default_steps("ddpm", config), default_steps("ddim", config), default_steps("dpm-solver", config)) == (1000, 50, 20)
    # every sampler keeps the predicted x0 in [-1, 1] (DPM-Solver via thresholding at 1)
    assert make_sampler("ddim", config).config.clip_sample
    dpm = make_sampler("dpm-solver", config).config
    assert dpm.thresholding and dpm.sample_max_value == 1.0
    with pytest.raises(UsageError, match="ddpm, ddim, dpm-solver"):
        make_sampler("euler", config)
    with pytest.raises(UsageError, match="--schedule"):
        scheduler_config(beta_schedule="cosine")


def test_pytorch_fid_key_conversion():
    from medtools.synth.fid import convert_inception_keys

    wrapper = {"blocks.0.0.conv.weight": 1, "blocks.2.7.branch1x1.bn.running_mean": 2, "blocks.3.2.branch_pool.conv.weight": 3, "blocks.0.1.bn.num_batches_tracked": 4}
    assert convert_inception_keys(wrapper) == {"Conv2d_1a_3x3.conv.weight": 1, "Mixed_6e.branch1x1.bn.running_mean": 2, "Mixed_7c.branch_pool.conv.weight": 3}
    plain = {"module.fc.weight": 5, "AuxLogits.fc.weight": 6, "Mixed_5b.branch1x1.conv.weight": 7}
    assert convert_inception_keys({"state_dict": plain}) == {"fc.weight": 5, "Mixed_5b.branch1x1.conv.weight": 7}


def test_roc_metrics_known_values():
    from medtools.synth.mia import attack_metrics

    perfect, _ = attack_metrics(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0]))
    assert perfect["auc"] == 1.0 and perfect["balanced_accuracy"] == 1.0 and perfect["tpr_at_1pct_fpr"] == 1.0
    inverted, roc = attack_metrics(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    assert inverted["auc"] == 0.0 and inverted["tpr_at_1pct_fpr"] == 0.0
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and roc["fpr"][-1] == 1.0
    ties, _ = attack_metrics(np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    assert ties["auc"] == pytest.approx(0.5)
    mixed, _ = attack_metrics(np.array([0.9, 0.8, 0.3]), np.array([0.7, 0.2, 0.1]))
    assert mixed["auc"] == pytest.approx(8 / 9)
    assert mixed["tpr_at_1pct_fpr"] == pytest.approx(2 / 3)


def test_patient_regex(tmp_path):
    from medtools.synth.images import patient_from_regex

    path = tmp_path / "person12_bacteria_3.jpeg"
    assert patient_from_regex(path, r"^(?P<patient>person\d+)_") == "person12"
    assert patient_from_regex(path, r"^(person\d+)") == "person12"
    with pytest.raises(InputError, match="does not match"):
        patient_from_regex(path, r"^IM-\d+")
    with pytest.raises(UsageError, match="not a valid"):
        patient_from_regex(path, r"(")


def test_opacus_per_sample_gradients_are_exact_on_the_unet():
    """DP-SGD clips each example's gradient: opacus' hooks must give the true per-example gradients."""
    import torch
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    from medtools.synth.models import build_unet, unet_config
    from medtools.synth.schedule import scheduler_config, training_scheduler
    from medtools.synth.train import GRAD_SAMPLE_MODE

    torch.manual_seed(0)
    net = build_unet(**unet_config(size=16, widths=(8, 16), attention=(1,), layers_per_block=1))
    assert ModuleValidator.validate(net, strict=False) == []
    scheduler = training_scheduler(scheduler_config())
    x, t = torch.rand(3, 1, 16, 16) * 2 - 1, torch.randint(0, 1000, (3,))
    noise = torch.randn_like(x)

    def loss_of(model, index):
        return torch.nn.functional.mse_loss(model(scheduler.add_noise(x[index], noise[index], t[index]), t[index]).sample, noise[index])

    params = list(net.parameters())
    each = [torch.autograd.grad(loss_of(net, slice(i, i + 1)), params) for i in range(3)]
    # as make_private(loss_reduction="mean", grad_sample_mode=GRAD_SAMPLE_MODE) wraps it
    wrapped = GradSampleModule(net, loss_reduction="mean", force_functorch=GRAD_SAMPLE_MODE == "functorch")
    loss_of(wrapped, slice(0, 3)).backward()
    for k, param in enumerate(params):
        # with a mean loss opacus scales by the batch size: grad_sample[i] is example i's own gradient
        for i in range(3):
            torch.testing.assert_close(param.grad_sample[i], each[i][k], atol=1e-5, rtol=1e-3)
