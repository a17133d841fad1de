"""The inference fast paths: oneDNN-reordered weights (UNet.frozen_weights), the channels-last
GroupNorm detour, and torch.compile through diffusion.fast.CompiledUNet with its eager fallback."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import DIFFUSERS_TINY, GOOGLE_TINY, random_diffusers_unet
from diffusion import DiffusionPipeline, fast
from diffusion.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# The smallest UNet that still has every block kind: one level of 32 channels (1 per group), attention
# in the middle block. Compiles in seconds.
MICRO = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32,), down_block_types=("DownBlock2D",),
             up_block_types=("UpBlock2D",), layers_per_block=1)


def ours_and_reference(config: dict, seed: int = 0):
    ref = random_diffusers_unet(config, seed, std=0.05)
    ours = UNet(UNetConfig(**config)).eval()
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("config", [GOOGLE_TINY, DIFFUSERS_TINY], ids=["google", "diffusers"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_weights_match_diffusers(config, channels_last):
    ours, ref = ours_and_reference(config)
    if channels_last:
        ours.to(memory_format=torch.channels_last)
    c, s = config["in_channels"], config["sample_size"]
    with torch.no_grad(), ours.frozen_weights() as cache:
        for batch, t in ((1, torch.tensor(417)), (3, torch.tensor([0, 417, 999])), (2, torch.tensor(3))):
            x = torch.randn(batch, c, s, s)
            got, expected = ours(x, t), ref(x, t).sample
            assert (got - expected).abs().max().item() <= 1e-5
    assert cache and all(packed.is_mkldnn for _, packed in cache.values())  # the oneDNN path did run


def test_frozen_weights_notice_a_weight_change():
    ours, _ = ours_and_reference(DIFFUSERS_TINY)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad(), ours.frozen_weights():
        before = ours(x, 10)
        ours.conv_in.weight.mul_(2)  # through the parameter: its version counter moves
        after = ours(x, 10)
    with torch.no_grad():
        assert (after - ours(x, 10)).abs().max().item() <= 1e-6
    assert (after - before).abs().max().item() > 1e-3


def test_frozen_weights_leave_autograd_alone():
    ours, _ = ours_and_reference(DIFFUSERS_TINY)
    with ours.frozen_weights() as cache:
        ours(torch.randn(2, 1, 16, 16), 10).square().mean().backward()
    assert not cache and ours.conv_in.weight.grad is not None


def test_pipeline_runs_frozen_and_samples_as_before():
    ours, ref = ours_and_reference(DIFFUSERS_TINY)
    pipe = DiffusionPipeline(ours, {"num_train_timesteps": 1000})
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(5)
    x = pipe.initial_noise(2, seed=3)
    expected = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            expected = sched.step(ref(expected, t).sample, t, expected).prev_sample
    got = list(pipe.denoise("ddim", noise=x, num_inference_steps=5))[-1].x_prev
    assert (got - expected).abs().max().item() <= 1e-5


def test_compiled_matches_eager_compiles_in_background_and_survives_a_batch_change():
    if fast.compiler_problem(torch.device("cpu")):
        pytest.skip("no C++ compiler for Inductor")
    torch.manual_seed(0)
    unet = UNet(UNetConfig(**MICRO)).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    compiled = fast.CompiledUNet(unet, background=True)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        first = compiled(x, 17)  # nothing compiled yet: answered eagerly, compiled in the background
        assert torch.equal(first, unet(x, torch.tensor(17.0)))
        assert compiled.wait(timeout=600) and compiled.error is None and compiled.ready(x.shape)
        compiled.background = False  # from here on a new batch size compiles at its first call
        for batch in (2, 3):  # the batch dimension is dynamic: 3 reuses the graph of 2
            x = torch.randn(batch, 1, 8, 8)
            for t in (17, 640.5):
                assert (compiled(x, t) - unet(x, torch.tensor(t))).abs().max().item() <= 1e-5
    assert compiled.ready((3, 1, 8, 8)) and compiled.error is None


def test_no_compiler_falls_back_to_eager(monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise RuntimeError("Failed to find a working C++ compiler. Tried: ('g++',)")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    ours, _ = ours_and_reference(DIFFUSERS_TINY)
    pipe = DiffusionPipeline(ours, {})
    with pytest.warns(RuntimeWarning, match="C\\+\\+ compiler"):
        pipe.compile(batch_sizes=(2,))
    x = torch.randn(2, 1, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, at compile(), not at every call
        got = pipe.compiled(x, 10)
    with torch.no_grad():
        assert torch.equal(got, ours(x, torch.tensor(10.0)))
    assert "C++ compiler" in pipe.compiled.error


def test_compile_error_falls_back_to_eager(monkeypatch):
    def broken(module, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("InductorError: simulated lowering failure")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    ours, _ = ours_and_reference(DIFFUSERS_TINY)
    compiled = fast.CompiledUNet(ours)
    x = torch.randn(2, 1, 16, 16)
    with pytest.warns(RuntimeWarning, match="simulated lowering failure"):
        got = compiled(x, 10)
    with torch.no_grad():
        assert torch.equal(got, ours(x, torch.tensor(10.0)))
        compiled(x, 11)  # no second warning, no second attempt
