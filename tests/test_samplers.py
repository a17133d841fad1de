"""Our samplers against diffusers' DDPMScheduler / DDIMScheduler, step for step, on the same model and noise."""

from __future__ import annotations

import itertools

import pytest
import torch

from diffusion.samplers import SAMPLERS, get_sampler, select_timesteps
from diffusion.schedule import NoiseSchedule

from conftest import TINY_8, random_diffusers_unet

SPACINGS = ["leading", "linspace", "trailing"]
# Final samples agree to 1e-4. The leftover difference is float32 rounding: diffusers derives
# alpha-bar in float32, we in float64, and 1000 steps add up ulp-sized differences.
TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    unet = random_diffusers_unet(TINY_8, seed=0, std=0.05)

    def fn(x, t):
        with torch.no_grad():
            return unet(x, torch.as_tensor(t)).sample

    return fn


def reference_loop(scheduler, model, steps, seed, **step_kwargs):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 1, 8, 8), generator=g)
    scheduler.set_timesteps(steps)
    ts, x0s = [], []
    for t in scheduler.timesteps:
        out = scheduler.step(model(x, t), t, x, generator=g, **step_kwargs)
        x = out.prev_sample
        ts.append(int(t))
        x0s.append(out.pred_original_sample)
    return x, ts, x0s


def our_loop(name, model, steps, seed, **options):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 1, 8, 8), generator=g)
    spec = get_sampler(name)
    records = list(
        spec.fn(model, x, NoiseSchedule.from_config(), spec.make_options(num_inference_steps=steps, **options), g)
    )
    return records[-1].x_prev, [r.t for r in records], [r.pred_x0 for r in records]


def ddpm_cases():
    for variance in ("fixed_small", "fixed_large"):
        yield variance, 1000, "leading"  # all spacings coincide at T steps
        for steps, spacing in itertools.product((100, 50, 10), SPACINGS):
            yield variance, steps, spacing


@pytest.mark.parametrize("variance,steps,spacing", list(ddpm_cases()))
def test_ddpm_matches_diffusers(model, variance, steps, spacing):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(variance_type=variance, timestep_spacing=spacing)
    x_ref, ts_ref, x0_ref = reference_loop(ref, model, steps, seed=1)
    x, ts, x0 = our_loop("ddpm", model, steps, seed=1, variance_type=variance, timestep_spacing=spacing)
    assert ts == ts_ref
    assert (x0[len(x0) // 2] - x0_ref[len(x0) // 2]).abs().max() <= TOL
    assert x_ref.abs().mean() > 0.05
    assert (x - x_ref).abs().max().item() <= TOL


def ddim_cases():
    for eta in (0.0, 0.5, 1.0):
        yield eta, 1000, "leading"
        for steps, spacing in itertools.product((100, 50, 10), SPACINGS):
            yield eta, steps, spacing


@pytest.mark.parametrize("eta,steps,spacing", list(ddim_cases()))
def test_ddim_matches_diffusers(model, eta, steps, spacing):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(timestep_spacing=spacing)
    x_ref, ts_ref, _ = reference_loop(ref, model, steps, seed=2, eta=eta)
    x, ts, _ = our_loop("ddim", model, steps, seed=2, eta=eta, timestep_spacing=spacing)
    assert ts == ts_ref
    assert (x - x_ref).abs().max().item() <= TOL


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
@pytest.mark.parametrize("clip", [True, False])
def test_prediction_types_and_clipping(model, prediction, clip):
    from diffusers import DDIMScheduler, DDPMScheduler

    for name, ref, kw in (("ddpm", DDPMScheduler(prediction_type=prediction, clip_sample=clip), {}),
                          ("ddim", DDIMScheduler(prediction_type=prediction, clip_sample=clip), {"eta": 0.3})):
        x_ref, _, _ = reference_loop(ref, model, 20, seed=3, **kw)
        x, _, _ = our_loop(name, model, 20, seed=3, prediction_type=prediction, clip_sample=clip, **kw)
        assert (x - x_ref).abs().max().item() <= TOL, name


def test_ddim_clipped_model_output_and_alpha_to_one(model):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(set_alpha_to_one=False, steps_offset=1)
    x_ref, _, _ = reference_loop(ref, model, 25, seed=4, eta=1.0, use_clipped_model_output=True)
    x, _, _ = our_loop(
        "ddim", model, 25, seed=4, eta=1.0, use_clipped_model_output=True, set_alpha_to_one=False, steps_offset=1
    )
    assert (x - x_ref).abs().max().item() <= TOL


def test_quad_spacing_is_the_ddim_papers():
    # floor(i^2 * 800 / 81) for i = 9..0: the DDIM code's int((linspace(0, sqrt(0.8 T), 10))^2)
    assert select_timesteps(1000, 10, "quad") == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]
    with pytest.raises(ValueError, match="use at most"):
        select_timesteps(1000, 100, "quad")


def test_steps_expose_every_update(model):
    x = torch.randn(1, 1, 8, 8)
    spec = get_sampler("ddim")
    steps = list(spec.fn(model, x, NoiseSchedule.from_config(), spec.make_options(num_inference_steps=5)))
    assert [s.index for s in steps] == list(range(5))
    assert all(torch.equal(a.x_prev, b.x_t) for a, b in zip(steps, steps[1:]))
    assert steps[-1].t_prev < 0 and steps[0].x_t is x


def test_registry_lists_ddpm_and_ddim():
    assert {"ddpm", "ddim"} <= set(SAMPLERS)
    assert get_sampler("ddim").options().num_inference_steps == 50
    assert get_sampler("ddpm").options().num_inference_steps == 1000


@pytest.mark.parametrize("call,message", [
    (lambda: get_sampler("euler-maruyama-x"), "Unknown sampler 'euler-maruyama-x'; available: "),
    (lambda: get_sampler("ddim").make_options(etta=0.5), "Sampler 'ddim' has no option 'etta'; its options are: "),
    (lambda: get_sampler("ddim").make_options(eta=2.0), "eta must be between 0"),
    (lambda: get_sampler("ddim").make_options(timestep_spacing="random"), "timestep_spacing='random' is not one of"),
    (lambda: get_sampler("ddpm").make_options(variance_type="learned"), "variance_type='learned' is not one of"),
    (lambda: get_sampler("ddpm").make_options(num_inference_steps=0), "num_inference_steps must be a positive integer"),
    (lambda: select_timesteps(1000, 1001), "between 1 and 1000"),
    (lambda: select_timesteps(1000, 10, "leading", offset=200), "past the last trained timestep"),
])
def test_nonsense_options_are_refused_clearly(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()
