"""DiffusionPipeline: the same images as diffusers' pipelines for the same seed, options from the scheduler config
then the caller, batches that do not change the images, and a sample that turns non-finite stopped with a reason."""

from __future__ import annotations

import pytest
import torch

import diffusion
from diffusion import DiffusionPipeline, UNet, UNetConfig

from conftest import TINY_16

TOL = 1e-4  # as the sampler parity tests: float32 rounding of diffusers' alpha-bar, summed over the steps


def test_pipeline_equals_diffusers_pipelines(diffusers_checkpoint):
    """Same seed, same images: our pipeline (our UNet) against DDPMPipeline and DDIMPipeline."""
    from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler


    path, unet = diffusers_checkpoint
    pipe = diffusion.load(path)
    sched = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    for ours, theirs in (
        (
            pipe.sample("ddpm", n=2, seed=7, num_inference_steps=30),
            DDPMPipeline(unet, sched)(
                batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=30, output_type="pt"
            ),
        ),
        (
            pipe.sample("ddim", n=2, seed=7, num_inference_steps=20),
            DDIMPipeline(unet, sched)(
                batch_size=2, generator=torch.Generator().manual_seed(7), num_inference_steps=20, output_type="pt"
            ),
        ),
    ):
        assert (ours - theirs.images).abs().max().item() <= TOL


def test_options_come_from_the_scheduler_config_then_the_caller():
    unet = UNet(UNetConfig(**TINY_16)).eval()
    pipe = DiffusionPipeline(unet, {"clip_sample": False, "timestep_spacing": "trailing", "prediction_type": "sample"})
    ddim = pipe.sampler_options("ddim")
    assert (ddim.clip_sample, ddim.timestep_spacing, ddim.prediction_type, ddim.num_inference_steps) == (
        False, "trailing", "sample", 50)
    assert pipe.sampler_options("ddim", num_inference_steps=7, clip_sample=True).clip_sample is True
    # a key the config leaves out keeps the sampler's own default (DPM-Solver++: linspace, as from_config)
    assert DiffusionPipeline(unet, {}).sampler_options("dpm-solver++").timestep_spacing == "linspace"
    with pytest.raises(ValueError, match="number of steps must be between 1 and 1000"):
        pipe.sampler_options("ddim", num_inference_steps=5000)  # above T: refused before any loop


def test_batches_and_the_initial_noise_do_not_change_the_images():
    """x_T of all images is drawn first, so a deterministic sampler gives the same images in any batches
    (stochastic ones draw each batch's per-step noise in turn: the first batch equals diffusers' pipeline)."""
    torch.manual_seed(0)
    pipe = DiffusionPipeline(UNet(UNetConfig(**TINY_16)).eval(), {})
    whole = pipe.sample("ddim", n=5, seed=3, num_inference_steps=6)
    assert torch.allclose(pipe.sample("ddim", n=5, seed=3, num_inference_steps=6, batch_size=2), whole, atol=TOL)
    x_t = torch.randn((5, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(pipe.initial_noise(5, 3), x_t)  # as diffusers' pipelines draw it
    assert whole.min() >= 0 and whole.max() <= 1 and whole.shape == (5, 1, 8, 8)


def test_a_sample_that_turns_non_finite_is_stopped_with_the_step():
    pipe = DiffusionPipeline(UNet(UNetConfig(**TINY_16)).eval(), {})
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="The sample turned NaN or infinite at step 1 of 3"):
        pipe.sample("ddim", n=1, num_inference_steps=3)
