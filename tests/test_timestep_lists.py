"""Explicit timestep lists (diffusers' ``set_timesteps(timesteps=[...])``): DDPM and DPM-Solver++ against diffusers
on the same list, DDIM, UniPC, DEIS and DDIM inversion equal to their spaced runs on the same timesteps, and the
lists refused with the reason."""

from __future__ import annotations

import pytest
import torch

from diffusion.latents import inversion_timesteps
from diffusion.samplers import get_sampler
from diffusion.schedule import NoiseSchedule

from conftest import TINY_8, random_diffusers_unet

TOL = 1e-4
UNEVEN = [999, 950, 850, 700, 500, 300, 150, 60, 20, 5]


@pytest.fixture(scope="module")
def model():
    unet = random_diffusers_unet(TINY_8, seed=0, std=0.05)
    abar = NoiseSchedule.from_config().alphas_cumprod

    def fn(x, t):  # the exact denoiser of N(0, 0.25 I) data plus a random UNet: samples in the data range
        a = float(abar[int(t)])
        with torch.no_grad():
            return (1 - a) ** 0.5 * x / (a * 0.25 + 1 - a) + unet(x, torch.as_tensor(t)).sample

    return fn


def run(name: str, model, seed: int = 1, **options) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 1, 8, 8), generator=g)
    spec = get_sampler(name)
    return list(spec.fn(model, x, NoiseSchedule.from_config(), spec.make_options(**options), g))


def diffusers_run(scheduler, model, timesteps: list[int], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 1, 8, 8), generator=g)
    scheduler.set_timesteps(timesteps=timesteps)
    assert [int(t) for t in scheduler.timesteps] == timesteps
    for t in scheduler.timesteps:
        kw = {"generator": g} if "generator" in scheduler.step.__code__.co_varnames else {}
        x = scheduler.step(model(x, t), t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("name", ["ddpm", "dpm-solver++"])
def test_a_list_matches_diffusers(model, name):
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    scheduler = {"ddpm": DDPMScheduler, "dpm-solver++": DPMSolverMultistepScheduler}[name]()
    x_ref = diffusers_run(scheduler, model, UNEVEN)
    steps = run(name, model, timesteps=UNEVEN)
    assert [s.t for s in steps] == UNEVEN and len(steps) == len(UNEVEN)
    assert get_sampler(name).timesteps(1000, get_sampler(name).make_options(timesteps=UNEVEN)) == UNEVEN
    assert 0.02 < x_ref.abs().mean() < 5
    assert (steps[-1].x_prev - x_ref).abs().max().item() <= TOL * max(1.0, x_ref.abs().max().item())


@pytest.mark.parametrize("name,options", [("ddim", dict(timestep_spacing="leading", num_inference_steps=10)),
                                          ("ddim", dict(timestep_spacing="quad", num_inference_steps=10)),
                                          ("ddpm", dict(timestep_spacing="trailing", num_inference_steps=10)),
                                          ("unipc", dict(timestep_spacing="linspace", num_inference_steps=10)),
                                          ("deis", dict(timestep_spacing="trailing", num_inference_steps=12))])
def test_the_spacings_own_list_gives_the_same_run(model, name, options):
    """A spacing's timesteps given as a list give the same run (DDIM's previous timestep is the next listed one,
    as for "quad"; leading's t - T // K is that too)."""
    spec = get_sampler(name)
    listed = [int(t) for t in spec.timesteps(1000, spec.make_options(**options))]
    spaced, explicit = run(name, model, **options), run(name, model, timesteps=listed)
    assert [s.t for s in explicit] == listed == [s.t for s in spaced]
    assert torch.equal(spaced[-1].x_prev, explicit[-1].x_prev)


def test_ddim_takes_an_uneven_list_and_inversion_follows_it(model):
    steps = run("ddim", model, timesteps=UNEVEN)
    assert [(s.t, s.t_prev) for s in steps] == list(zip(UNEVEN, [*UNEVEN[1:], -1]))
    assert torch.isfinite(steps[-1].x_prev).all()
    opts = get_sampler("ddim").make_options(timesteps=UNEVEN)
    assert inversion_timesteps(1000, opts) == list(zip([-1, *UNEVEN[::-1][:-1]], UNEVEN[::-1]))
    leading = get_sampler("ddim").make_options(num_inference_steps=10)
    as_list = get_sampler("ddim").make_options(timesteps=list(range(900, -1, -100)))
    assert inversion_timesteps(1000, leading) == inversion_timesteps(1000, as_list)


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("ddim", dict(timesteps=[500, 700, 100]), "strictly descending order"),
        ("ddim", dict(timesteps=[500, 500, 100]), "strictly descending order"),
        ("ddpm", dict(timesteps=[500, 100, -1]), "whole timesteps from 0 up"),
        ("ddpm", dict(timesteps=[500.5, 100]), "whole timesteps from 0 up"),
        ("ddpm", dict(timesteps=[]), "whole timesteps from 0 up"),
        ("ddpm", dict(timesteps="999, many"), "whole timesteps from 0 up"),
        ("pndm", dict(timesteps=[999, 500]), "Sampler 'pndm' has no option 'timesteps'"),
        ("euler", dict(timesteps=[999, 500]), "Sampler 'euler' has no option 'timesteps'"),
    ],
)
def test_bad_lists_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(name).make_options(**options)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpm-solver++", "unipc", "deis"])
def test_a_list_past_the_models_timesteps_or_with_sigmas_is_refused(name):
    spec = get_sampler(name)
    with pytest.raises(ValueError, match="timesteps start at 1000, past the model's last trained timestep 999"):
        spec.timesteps(1000, spec.make_options(timesteps=[1000, 500]))
    if name not in ("ddim", "ddpm"):
        with pytest.raises(ValueError, match="cannot be combined with Karras, exponential or beta sigmas"):
            spec.timesteps(1000, spec.make_options(timesteps=[999, 500], use_karras_sigmas=True))


def test_a_list_from_the_command_line(tmp_path, capsys):
    """``--option timesteps=999,500,100,0`` (text) sets the list and the number of steps."""
    from diffusion.sample import main

    from conftest import write_tiny_model

    path = write_tiny_model(tmp_path / "m")
    out = tmp_path / "grid.png"
    assert main(["--model", str(path), "--sampler", "ddim", "-n", "2", "--option", "timesteps=999,500,100,0",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert out.exists()
    assert get_sampler("ddim").make_options(timesteps="999, 500, 100, 0").num_inference_steps == 4
