"""DDIM inversion against diffusers' DDIMInverseScheduler, reconstruction on a model with a known exact
epsilon, slerp, interpolation and consistency (Song et al. 2021, Sec. 4.3, 5.2-5.4)."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.latent_tasks import consistency, interpolation_latents
from diffusion.latents import ddim_invert, slerp
from diffusion.pipeline import DiffusionPipeline
from diffusion.samplers import get_sampler
from diffusion.schedule import NoiseSchedule
from diffusion.unet import build_unet

from conftest import TINY_8, random_diffusers_unet

pytestmark = pytest.mark.usefixtures("one_thread")


# Latents agree to 1e-4 (measured: at most 4e-6). The predicted x0 divides by sqrt(abar_t) (~0.02 near
# t = 1000), which magnifies the float32 rounding of diffusers' alpha-bar (ours is float64): 1e-3 there.
TOL, TOL_X0 = 1e-4, 1e-3


@pytest.fixture(scope="module")
def unet():
    # std 0.2: outputs of order 1, so the latents move far from the images (std 0.02 gives eps ~ 0)
    return random_diffusers_unet(TINY_8, seed=0, std=0.2)


@pytest.fixture(scope="module")
def images():
    return torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))


def reference_inversion(scheduler, unet, images, steps):
    """diffusers' inversion loop (as in its DiffEdit and Pix2Pix-Zero pipelines): every step's output."""
    scheduler.set_timesteps(steps)
    x, out = images * 2 - 1, []
    for t in scheduler.timesteps:
        with torch.no_grad():
            step = scheduler.step(unet(x, t).sample, t, x)
        x = step.prev_sample
        out.append((int(t), x, step.pred_original_sample))
    return out


CASES = [
    dict(),  # DDPMScheduler's defaults: leading, epsilon, clip_sample
    dict(timestep_spacing="trailing"),
    dict(prediction_type="v_prediction", clip_sample=False),
    dict(prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(steps_offset=1, set_alpha_to_one=False, clip_sample_range=0.5),
    dict(prediction_type="sample", set_alpha_to_one=False),
]


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("config", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_inversion_matches_diffusers(unet, images, config, steps):
    from diffusers import DDIMInverseScheduler

    pipe = DiffusionPipeline(build_unet(unet.config, unet.state_dict()), config)
    expected = reference_inversion(DDIMInverseScheduler(**config), unet, images, steps)
    ours = list(pipe.invert_steps(images, steps))
    assert [s.t_prev for s in ours] == [t for t, _, _ in expected]
    for s, (_, x, x0) in zip(ours, expected):
        # relative beyond 1: x0 prediction's first step divides by sqrt(1 - abar_0) = 0.01 (latents ~ 30)
        assert (s.x_prev - x).abs().max() <= TOL * max(1.0, x.abs().max().item())
        assert (s.pred_x0 - x0).abs().max() <= TOL_X0
    latents = pipe.invert(images, steps)
    assert (latents - expected[-1][1]).abs().max() <= TOL * max(1.0, expected[-1][1].abs().max().item())
    assert torch.equal(latents, ours[-1].x_prev)
    assert latents.std() > 0.1  # the model moved the images: the comparison means something


def test_inversion_reads_a_ddpm_scheduler_config_as_diffusers_from_config(unet, images):
    """A checkpoint's DDPMScheduler config, as DDIMInverseScheduler.from_config reads it; batches do not matter."""
    from diffusers import DDIMInverseScheduler, DDPMScheduler

    config = dict(DDPMScheduler(prediction_type="v_prediction", clip_sample=False).config)
    config["set_alpha_to_zero"] = False  # the deprecated name diffusers still reads as set_alpha_to_one
    pipe = DiffusionPipeline(build_unet(unet.config, unet.state_dict()), config)
    reference = DDIMInverseScheduler.from_config(config)
    assert reference.initial_alpha_cumprod < 1  # diffusers did read it
    expected = reference_inversion(reference, unet, images, 20)
    assert (pipe.invert(images, 20, batch_size=1) - expected[-1][1]).abs().max() <= TOL


# A stand-in model with an exact epsilon: data x0 ~ N(0, S^2 I) gives eps(x_t) = sqrt(1 - abar) x_t /
# (abar S^2 + 1 - abar) (the posterior mean). The probability-flow ODE is then exact and invertible, so
# encode-then-decode errors are DDIM's discretisation alone and vanish as the steps grow.
S = 0.5


def gaussian_eps(schedule):
    def model(x, t):
        a = schedule.abar(int(round(t))).item()
        return math.sqrt(1 - a) * x / (a * S**2 + 1 - a)

    return model


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_reconstruction_error_falls_with_steps(spacing):
    schedule = NoiseSchedule.from_config()
    model = gaussian_eps(schedule)
    x0 = torch.rand((4, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    spec = get_sampler("ddim")
    errors = []
    for steps in (10, 20, 50, 100, 1000):
        options = spec.make_options(num_inference_steps=steps, clip_sample=False, timestep_spacing=spacing)
        *_, encoded = ddim_invert(model, x0, schedule, options)
        assert 0.9 < encoded.x_prev.std() < 1.3  # an x_T of unit-ish variance, not the image
        *_, decoded = spec.fn(model, encoded.x_prev, schedule, options)
        errors.append(((decoded.x_prev - x0) / 2).pow(2).mean().item())  # per dimension, in [0, 1]
    # measured: 5.8e-3, 1.4e-3, 2.2e-4, 5.6e-5, 5.6e-7 (Table 2 on CIFAR-10: 0.014 ... 0.0001)
    assert all(a > 2 * b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] < 0.02 and errors[-1] < 1e-5, errors


def test_invert_refuses_bad_images_and_options(unet, images):
    pipe = DiffusionPipeline(build_unet(unet.config, unet.state_dict()))
    bad = {
        "shape": (images[0], "shape"),
        "channels": (images.repeat(1, 3, 1, 1), "channel"),
        "size": (torch.rand(1, 1, 16, 16), "16x16"),
        "range": (images * 2 - 1, "[0, 1]"),
        "nan": (images.clone().fill_(float("nan")), "NaN"),
        "ints": ((images * 255).to(torch.uint8), "floats"),
        "empty": (images[:0], "shape"),
    }
    for what, (x, message) in bad.items():
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            pipe.invert(x, 5)
    for options, message in [
        (dict(eta=0.5), "eta"),
        (dict(timestep_spacing="linspace"), "leading' or 'trailing"),
        (dict(prediction_type="sample"), "set_alpha_to_one"),
        (dict(num_inference_steps=5000), "steps"),
        (dict(num_inference_steps="many"), "num_inference_steps"),
        (dict(karras=True), "no option"),
    ]:
        with pytest.raises(ValueError, match=message):
            list(pipe.invert_steps(images, **options))


def test_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 4, generator=g), torch.randn(3, 4, 4, generator=g)
    ends = slerp(a, b, [0.0, 1.0])
    assert ends.shape == (2, 3, 4, 4)
    assert torch.allclose(ends[0], a, atol=1e-6) and torch.allclose(ends[1], b, atol=1e-6)
    assert slerp(a, b, 0.3).shape == a.shape
    # orthogonal, equal norms: every point stays on the sphere, and the angle grows linearly in t
    u = torch.zeros(2, 8)
    u[0, 0], u[1, 3] = 5.0, 5.0
    path = slerp(u[0], u[1], torch.linspace(0, 1, 7))
    assert torch.allclose(path.norm(dim=1), torch.full((7,), 5.0), atol=1e-5)
    assert torch.allclose(torch.atan2(path[:, 3], path[:, 0]), torch.linspace(0, math.pi / 2, 7), atol=1e-6)
    # parallel: the linear limit, no NaN
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a, atol=1e-5)
    # opposite (b = -a) and zero latents: undefined, said so
    with pytest.raises(ValueError, match="opposite"):
        slerp(a, -a, 0.5)
    with pytest.raises(ValueError, match="zero"):
        slerp(a, torch.zeros_like(a), 0.5)
    with pytest.raises(ValueError, match="one shape"):
        slerp(a, b[:2], 0.5)


@pytest.fixture(scope="module")
def pipe(unet):
    return DiffusionPipeline(build_unet(unet.config, unet.state_dict()), {"clip_sample": False})


def test_interpolation_latents(pipe):
    latents = interpolation_latents(pipe, [1, 2, 3], frames=5)
    assert latents.shape == (9, 1, 8, 8)
    for i, seed in zip((0, 4, 8), (1, 2, 3)):
        assert torch.allclose(latents[i], pipe.initial_noise(1, seed)[0], atol=1e-6)
    images = pipe.sample("ddim", noise=latents, num_inference_steps=5)
    assert images.shape == (9, 1, 8, 8)
    assert torch.allclose(images[0], pipe.sample("ddim", seed=1, num_inference_steps=5)[0], atol=1e-5)
    with pytest.raises(ValueError, match="two seeds"):
        interpolation_latents(pipe, [1], 5)
    with pytest.raises(ValueError, match="2 frames"):
        interpolation_latents(pipe, [1, 2], 1)


def test_consistency(pipe):
    noise = pipe.initial_noise(2, 7)
    out = consistency(pipe, noise, [2, 5])
    assert list(out) == [2, 5] and all(v.shape == (2, 1, 8, 8) for v in out.values())
    assert torch.allclose(out[5], pipe.sample("ddim", 2, 7, num_inference_steps=5), atol=1e-6)
    with pytest.raises(ValueError, match="eta"):
        consistency(pipe, noise, [2], eta=1.0)
    with pytest.raises(ValueError, match="steps"):
        consistency(pipe, noise, [2, 5000])
