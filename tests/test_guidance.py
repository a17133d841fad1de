"""Class labels and classifier-free guidance: names, the driver's guided passes, diffusers as the reference."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion import DiffusionPipeline
from diffusion.classes import ClassInfo, check_guidance
from diffusion.samplers import SAMPLERS, get_sampler
from diffusion.unet import UNet, UNetConfig, load_state_dict_strict

from conftest import random_diffusers_unet

pytestmark = pytest.mark.usefixtures("one_thread")

COND_TINY = dict(
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1, num_class_embeds=4, norm_num_groups=8,  # 4 channels a group: GroupNorm keeps t and label
)
NAMES = ("Shirt", "T-shirt/top", "Ankle boot")
SCHEDULER = {"num_train_timesteps": 1000, "clip_sample": False}


@pytest.fixture(scope="module")
def reference():
    unet = random_diffusers_unet(COND_TINY, seed=3, std=0.05)
    with torch.no_grad():  # labels that matter: embeddings as large as a trained model's
        unet.class_embedding.weight.normal_(0, 2.0)
    return unet


@pytest.fixture(scope="module")
def pipe(reference):
    unet = UNet(UNetConfig(**COND_TINY)).eval()
    load_state_dict_strict(unet, reference.state_dict())
    return DiffusionPipeline(unet, SCHEDULER, classes=ClassInfo(NAMES, 3, 2.0))


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guided_ddim_matches_diffusers(reference, pipe, scale):
    """diffusers has no guided pipeline for UNet2DModel: the reference is its DDIMScheduler driving its UNet
    with the guidance formula written out, eps_null + s (eps_cond - eps_null), two separate passes."""
    from diffusers import DDIMScheduler

    labels = torch.tensor([0, 2, 1])
    x = torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(7))
    sched = DDIMScheduler(**SCHEDULER)
    sched.set_timesteps(20)
    ref = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            cond = reference(ref, t, class_labels=labels).sample
            null = reference(ref, t, class_labels=torch.full_like(labels, 3)).sample
            ref = sched.step(null + scale * (cond - null), t, ref).prev_sample
    got = final(pipe, "ddim", noise=x, num_inference_steps=20, class_labels=labels, guidance_scale=scale)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    if scale != 1:  # guidance moved the sample: the comparison is not of two unguided runs
        plain = final(pipe, "ddim", noise=x, num_inference_steps=20, class_labels=labels, guidance_scale=1.0)
        assert (plain - ref).abs().max() > 1e-3 * ref.abs().max()  # 10x the tolerance


class CountingUNet(torch.nn.Module):
    """Records the batch size of every call to the wrapped UNet."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet, self.config, self.batches = unet, unet.config, []

    def forward(self, x, t, class_labels=None):
        self.batches.append(len(x))
        return self.unet(x, t, class_labels)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["unet"], name)


def final(pipe: DiffusionPipeline, sampler: str, **kw) -> torch.Tensor:
    """The raw last x_prev of the driver (before [0, 1] clamping hides differences)."""
    return list(pipe.denoise(sampler, **kw))[-1].x_prev


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_takes_guidance(pipe, sampler):
    """Every sampler sees the guided output; on the CPU the class and null halves are two calls of n images
    (one batched call of 2n on a GPU: the next test), one call at s = 0 and s = 1."""
    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(noise=noise, seed=0, num_inference_steps=4, class_labels="ankle boot")
    guided = final(pipe, sampler, guidance_scale=3.0, **kw)
    uncond = final(pipe, sampler, guidance_scale=0.0, **kw)
    cond = final(pipe, sampler, guidance_scale=1.0, **kw)
    assert (guided - cond).abs().max() > 1e-3 and (uncond - cond).abs().max() > 1e-3
    counting = DiffusionPipeline(CountingUNet(pipe.unet), SCHEDULER, classes=pipe.classes)
    assert torch.equal(final(counting, sampler, guidance_scale=3.0, **kw), guided)
    evaluations = len(get_sampler(sampler).timesteps(pipe.schedule, pipe.sampler_options(sampler,
                                                                                          num_inference_steps=4)))
    assert counting.unet.batches == [2] * (2 * evaluations)  # the class half, then the null half
    for scale in (1.0, 0.0):  # one pass
        counting.unet.batches.clear()
        final(counting, sampler, guidance_scale=scale, **kw)
        assert counting.unet.batches == [2] * evaluations


def test_one_batched_call_gives_the_same_guidance(pipe):
    """The batched form (a GPU's) makes one call of 2n images per evaluation, with the two calls' numbers."""
    from diffusion.classes import guided

    calls = []

    def net(x, t, labels):
        calls.append(len(x))
        with torch.no_grad():
            return pipe.unet(x, torch.tensor(t), labels)

    x, labels = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(8)), torch.tensor([0, 1, 2])
    batched = guided(net, labels, 3, 2.5, batched=True)(x, 400)
    assert calls == [6]
    two = guided(net, labels, 3, 2.5, batched=False)(x, 400)
    assert calls == [6, 3, 3] and torch.allclose(batched, two, atol=1e-5)


def test_guidance_zero_is_the_null_label(pipe):
    """s = 0 samples the model given the null label: the same numbers as the UNet called with it directly."""
    noise = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    uncond = final(pipe, "ddim", noise=noise, num_inference_steps=5, class_labels=0, guidance_scale=0.0)
    plain = DiffusionPipeline(pipe.unet, SCHEDULER, classes=ClassInfo(("a", "b", "c", "null")))
    direct = final(plain, "ddim", noise=noise, num_inference_steps=5, class_labels=3, guidance_scale=1.0)
    assert torch.equal(uncond, direct)


def test_class_names_and_all():
    info = ClassInfo(("T-shirt/top", "Trouser", "Sneaker", "Ankle boot"), 4, 3.0)
    assert info.labels("sneaker") == [2] and info.labels("T-SHIRT") == [0] and info.labels("ankle-boot") == [3]
    assert info.labels("all") == [0, 1, 2, 3] and info.labels(["1", 2, "trouser"]) == [1, 2, 1]
    with pytest.raises(ValueError, match="'dress' is not a class of this model; give an index or a name: 0 T-shirt"):
        info.label("dress")
    with pytest.raises(ValueError, match="class label 4 is out of range; this model has classes 0 to 3"):
        info.label(4)
    with pytest.raises(ValueError, match="names several classes"):
        ClassInfo(("Shirt A", "Shirt B")).label("shirt")
    again = ClassInfo.from_dict(json.loads(info.to_json()), num_labels=5)
    assert again == info


@pytest.mark.parametrize("data,num,message", [
    ({"names": []}, 5, "should hold"),
    ({"names": ["a", "b"], "null_label": 1}, 5, "null_label 1 is also the label of class 'b'"),
    ({"names": ["a", "b"], "null_label": 2}, 2, "the UNet has only 2 label embeddings"),
    ({"names": ["a"], "null_label": True}, 5, "null_label must be a label index"),
    ({"names": ["a"], "guidance_scale": -1}, 5, "guidance_scale must be between 0 and 20"),
])
def test_bad_classes_json_is_refused(data, num, message):
    with pytest.raises(ValueError, match=message):
        ClassInfo.from_dict(data, num)


def test_label_and_guidance_errors_say_what_to_do(pipe):
    with pytest.raises(ValueError, match="class-conditional: give a class label for the images .0 Shirt"):
        pipe.sample("ddim", n=1, num_inference_steps=2)
    with pytest.raises(ValueError, match="'dress' is not a class"):
        pipe.sample("ddim", n=1, num_inference_steps=2, class_labels="dress")
    with pytest.raises(ValueError, match="Got 2 class labels for 3 images"):
        pipe.sample("ddim", n=3, num_inference_steps=2, class_labels=[0, 1])
    with pytest.raises(ValueError, match="guidance_scale must be between 0 and 20"):
        pipe.sample("ddim", n=1, num_inference_steps=2, class_labels=0, guidance_scale=float("nan"))
    no_null = DiffusionPipeline(pipe.unet, SCHEDULER)  # no classes.json: classes by number, no null label
    assert no_null.classes.names == ("0", "1", "2", "3") and no_null.classes.null_label is None
    with pytest.raises(ValueError, match="needs the model's null label, and this model records none"):
        no_null.sample("ddim", n=1, num_inference_steps=2, class_labels=0, guidance_scale=3)
    assert no_null.sample("ddim", n=1, num_inference_steps=2, class_labels=0).shape == (1, 1, 8, 8)  # s = 1
    plain = DiffusionPipeline(UNet(UNetConfig(**{**COND_TINY, "num_class_embeds": None})).eval(), SCHEDULER)
    with pytest.raises(ValueError, match="This model is unconditional: it takes no class label"):
        plain.sample("ddim", n=1, num_inference_steps=2, class_labels=1)
    with pytest.raises(ValueError, match="Guidance needs a class-conditional model"):
        plain.sample("ddim", n=1, num_inference_steps=2, guidance_scale=3)
    assert check_guidance("2.5") == 2.5


def test_the_recommended_scale_is_the_default(pipe):
    noise = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    default = final(pipe, "ddim", noise=noise, num_inference_steps=3, class_labels=1)
    assert torch.equal(default, final(pipe, "ddim", noise=noise, num_inference_steps=3, class_labels=1,
                                      guidance_scale=2.0))
    assert not torch.equal(default, final(pipe, "ddim", noise=noise, num_inference_steps=3, class_labels=1,
                                          guidance_scale=1.0))


def test_classes_json_travels_with_the_model(pipe, tmp_path):
    from diffusers import UNet2DModel

    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "classes.json").read_text())["null_label"] == 3
    again = DiffusionPipeline.from_pretrained(tmp_path)
    assert again.classes == pipe.classes and again.unet.config.num_class_embeds == 4
    assert UNet2DModel.from_pretrained(tmp_path / "unet").config.num_class_embeds == 4
    from diffusion import CheckpointError

    (tmp_path / "classes.json").write_text('{"names": ["a", "b", "c", "d"], "null_label": 4}')
    with pytest.raises(CheckpointError, match="names 4 classes and a null label, but the UNet has only 4 label"):
        DiffusionPipeline.from_pretrained(tmp_path)
    (tmp_path / "classes.json").write_text('{"names": ["a", "b", "c"], "null_label": 2}')
    with pytest.raises(CheckpointError, match="null_label 2 is also the label of class 'c'"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_inversion_takes_a_label(pipe):
    """Encoding under a label and decoding under the same label gives the image back (random weights: a
    smooth model, so DDIM's ODE is close to reversible at 50 steps); another label gives other latents."""
    images = torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(5)) * 0.5 + 0.25
    latents = pipe.invert(images, 50, class_labels=1)
    back = pipe.sample("ddim", noise=latents, num_inference_steps=50, class_labels=1, guidance_scale=1.0)
    assert (back - images).abs().max() < 0.02
    assert (pipe.invert(images, 50, class_labels=2) - latents).abs().max() > 1e-3


def test_mixed_classes_interpolate_between_label_embeddings(pipe):
    """(B, num_class_embeds) weights mix the table's rows: weight 0 and 1 are the two classes themselves."""
    noise = torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(6)).repeat(3, 1, 1, 1)
    mix = pipe.classes.mix(0, 2, torch.tensor([0.0, 0.5, 1.0]), pipe.unet.config.num_class_embeds)
    got = final(pipe, "ddim", noise=noise, num_inference_steps=4, class_labels=mix, guidance_scale=2.0)
    ends = final(pipe, "ddim", noise=noise[:2], num_inference_steps=4, class_labels=[0, 2], guidance_scale=2.0)
    assert torch.allclose(got[[0, 2]], ends, atol=1e-5)
    assert (got[1] - got[0]).abs().max() > 1e-3 and (got[1] - got[2]).abs().max() > 1e-3
