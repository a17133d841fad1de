"""The inference fast paths: oneDNN-reordered weights (UNet.frozen_weights), the channels-last
GroupNorm detour, and the ahead-of-time compiled UNet (diffusion.compiled) with its eager fallback."""

from __future__ import annotations

import pytest
import torch

from diffusion import DiffusionPipeline, compiled
from diffusion.unet import UNet, UNetConfig

from conftest import DIFFUSERS_TINY, GOOGLE_TINY, random_diffusers_unet

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


def micro_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    unet = UNet(UNetConfig(**MICRO)).eval().requires_grad_(False)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    return unet


def test_package_is_keyed_by_the_weights(tmp_path):
    a, b = micro_unet(0), micro_unet(1)
    assert compiled.package_path(a, tmp_path) == compiled.package_path(micro_unet(0), tmp_path)
    assert compiled.package_path(a, tmp_path) != compiled.package_path(b, tmp_path)
    a.to(memory_format=torch.channels_last)  # the layout is not part of the key: the values are
    assert compiled.package_path(a, tmp_path) == compiled.package_path(micro_unet(0), tmp_path)
    assert compiled.load(a, tmp_path) is None  # nothing built: None, silently (sampling stays eager)


def test_compiled_package_matches_eager_for_any_batch_and_timestep(tmp_path):
    if compiled.compiler_problem():
        pytest.skip("no C++ compiler for Inductor")
    unet = micro_unet()
    path = compiled.build(unet, tmp_path, verbose=False)
    assert path.is_file() and path.suffix == ".pt2" and not list(tmp_path.glob(".*tmp*"))  # written atomically
    assert compiled.build(unet, tmp_path) == path  # built once: the second call finds it
    net = compiled.load(unet, tmp_path)
    assert net is not None
    with torch.no_grad():
        for batch in (1, 3, compiled.MAX_BATCH):  # the batch dimension is dynamic
            x = torch.randn(batch, 1, 8, 8)
            for t in (17, 640.5):
                assert net.applies(x)
                assert (net(x, t) - unet(x, torch.tensor(float(t)))).abs().max().item() <= 1e-5
        big = torch.randn(compiled.MAX_BATCH + 1, 1, 8, 8)  # beyond the package's range: the eager UNet
        assert not net.applies(big) and torch.equal(net(big, 5), unet(big, torch.tensor(5.0)))
    # a pipeline samples through it where it exists, with the eager pipeline's numbers
    pipe = DiffusionPipeline(unet, {})
    eager = pipe.sample("ddim", n=2, seed=1, num_inference_steps=4)
    assert pipe.compile(cache_dir=tmp_path) and pipe.compiled is not None
    assert (pipe.sample("ddim", n=2, seed=1, num_inference_steps=4) - eager).abs().max().item() <= 1e-5
    assert not DiffusionPipeline(micro_unet(2), {}).compile(cache_dir=tmp_path)  # other weights: no package


def test_no_compiler_stays_eager_with_one_warning(monkeypatch, tmp_path):
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise RuntimeError("Failed to find a working C++ compiler. Tried: ('g++',)")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    pipe = DiffusionPipeline(micro_unet(), {})
    with pytest.warns(RuntimeWarning, match="C\\+\\+ compiler"):
        assert pipe.compile(build=True, cache_dir=tmp_path) is False
    assert pipe.compiled is None and not list(tmp_path.iterdir())
    assert pipe.sample("ddim", n=1, seed=0, num_inference_steps=2).shape == (1, 1, 8, 8)


def test_a_corrupt_package_is_refused_with_a_warning(tmp_path):
    unet = micro_unet()
    path = compiled.package_path(unet, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a package")
    with pytest.warns(RuntimeWarning, match="compiled UNet is unavailable"):
        assert compiled.load(unet, tmp_path) is None


def test_compile_command_line(tmp_path, capsys):
    assert compiled.main([str(tmp_path / "missing"), "--cache-dir", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
