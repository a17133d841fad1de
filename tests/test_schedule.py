"""Noise schedules and the forward process against diffusers' DDPMScheduler: betas, alpha-bar, q(x_t | x_0), the
v target, the (x0, eps) conversions, and a scheduler config read with diffusers' defaults."""

from __future__ import annotations

import pytest
import torch

from diffusion.schedule import BETA_SCHEDULES, NoiseSchedule, parse_scheduler_config, to_x0_eps


@pytest.mark.parametrize("name", BETA_SCHEDULES)
@pytest.mark.parametrize("T", [1000, 50])
def test_betas_and_alpha_bar_match_diffusers(name, T):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule=name, beta_start=1e-4, beta_end=0.02)
    ours = NoiseSchedule.from_config(name, T, 1e-4, 0.02)
    assert ours.betas.dtype == torch.float64 and ours.num_train_timesteps == T
    # diffusers holds float32; ours is float64 cast: the float32 values agree to float32 rounding
    assert torch.allclose(ours.betas.float(), ref.betas, rtol=1e-5, atol=1e-8)
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-7)
    if name in ("linear", "scaled_linear"):  # the float32 betas diffusers' sigma options start from, bit for bit
        assert torch.equal(ours.betas_float32, ref.betas)


def test_aliases_and_trained_betas():
    assert torch.equal(NoiseSchedule.from_config("cosine").betas, NoiseSchedule.from_config("squaredcos_cap_v2").betas)
    assert torch.equal(NoiseSchedule.from_config("quadratic").betas, NoiseSchedule.from_config("scaled_linear").betas)
    trained = NoiseSchedule.from_config(trained_betas=[0.1, 0.2, 0.3])
    assert trained.num_train_timesteps == 3
    assert trained.alphas_cumprod.tolist() == pytest.approx([0.9, 0.72, 0.504])
    with pytest.raises(ValueError, match="betas must be a 1-D sequence of values in"):
        NoiseSchedule(torch.tensor([0.1, 1.5]))


def test_q_sample_and_velocity_match_diffusers():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    ours = NoiseSchedule.from_config("squaredcos_cap_v2")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.allclose(ours.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), atol=1e-5)
    assert torch.allclose(ours.training_target("v_prediction", x0, t, noise), ref.get_velocity(x0, noise, t), atol=1e-5)
    assert torch.equal(ours.training_target("epsilon", x0, t, noise), noise)
    assert torch.equal(ours.training_target("sample", x0, t, noise), x0)


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_x0_and_eps_round_trip_through_every_prediction_type(prediction):
    schedule = NoiseSchedule.from_config()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 1, 4, 4, generator=g,
                                                                                     dtype=torch.float64)
    t = torch.tensor([300, 300])
    x_t = schedule.q_sample(x0, t, eps)
    output = schedule.training_target(prediction, x0, t, eps)  # what a perfect model outputs
    got_x0, got_eps = to_x0_eps(prediction, output, x_t, schedule.abar(300))
    assert torch.allclose(got_x0, x0, atol=1e-9) and torch.allclose(got_eps, eps, atol=1e-9)


def test_log_snr_final_abar_and_abar_past_zero():
    s = NoiseSchedule.from_config()
    abar = s.alphas_cumprod
    assert torch.allclose(s.log_snr(), torch.log(abar / (1 - abar)))
    assert s.log_snr()[0] > s.log_snr()[-1]  # decreasing in t
    assert s.final_abar(True) == 1.0 and s.final_abar(False) == pytest.approx(abar[0].item())
    assert s.abar(-1).item() == 1.0 and s.abar(-1, final=0.5).item() == 0.5 and s.abar(999) == abar[999]


def test_a_scheduler_config_is_read_with_diffusers_defaults():
    cfg = parse_scheduler_config({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
                                  "variance_type": "fixed_small_log", "_use_default_values": ["clip_sample"],
                                  "clip_sample": False})
    assert cfg["beta_schedule"] == "scaled_linear" and cfg["num_train_timesteps"] == 1000
    assert cfg["variance_type"] == "fixed_small"  # the same distribution, computed in log space by diffusers
    assert cfg["clip_sample"] is True  # listed in _use_default_values: the default, as from_config reads it
    assert "_class_name" not in cfg
    for bad, message in ((dict(variance_type="learned_range"), "predicts its own variance"),
                         (dict(thresholding=True), "Dynamic thresholding"),
                         (dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr")):
        with pytest.raises(ValueError, match=message):
            parse_scheduler_config(bad)
