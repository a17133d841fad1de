"""Our UNet against diffusers' UNet2DModel holding the same random weights."""

from __future__ import annotations

import pytest
import torch

from diffusion.unet import UNet, UNetConfig, convert_state_dict, load_state_dict_strict

from conftest import old_attention_names


def family(name: str, levels: int) -> dict:
    """Config kwargs of one of the two families, with ``levels`` levels and attention at level 1."""
    down = ["AttnDownBlock2D" if i == 1 else "DownBlock2D" for i in range(levels)]
    up = ["AttnUpBlock2D" if i == levels - 2 else "UpBlock2D" for i in range(levels)]
    if name == "google":
        return dict(down_block_types=down, up_block_types=up, attention_head_dim=None, flip_sin_to_cos=False,
                    freq_shift=1, downsample_padding=0, norm_eps=1e-6)
    # diffusers' defaults: attention heads of 8 channels, attention on most levels
    down = ["DownBlock2D"] + ["AttnDownBlock2D"] * (levels - 1)
    up = ["AttnUpBlock2D"] * (levels - 1) + ["UpBlock2D"]
    return dict(down_block_types=down, up_block_types=up)


CASES = [  # (family, channels, size, levels, layers_per_block)
    ("google", 3, 32, 4, 2),
    ("google", 1, 28, 3, 1),
    ("google", 3, 64, 6, 1),
    ("diffusers", 1, 28, 3, 2),
    ("diffusers", 3, 32, 4, 1),
    ("diffusers", 3, 64, 5, 1),
]


@pytest.mark.parametrize("fam,channels,size,levels,lpb", CASES)
def test_forward_matches_diffusers(fam, channels, size, levels, lpb):
    from diffusers import UNet2DModel

    widths = [32, 64, 64, 96, 96, 128][:levels]
    kwargs = dict(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths,
                  layers_per_block=lpb, **family(fam, levels))
    torch.manual_seed(levels * 10 + size)
    ref = UNet2DModel(**kwargs).eval()
    with torch.no_grad():
        for p in ref.parameters():  # the default init leaves some layers at zero: make every weight count
            p.normal_(0, 0.05)
    ours = UNet(UNetConfig(**kwargs)).eval()
    load_state_dict_strict(ours, ref.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict())
    x = torch.randn(3, channels, size, size)
    t = torch.tensor([0, 417, 999])
    with torch.no_grad():
        expected = ref(x, t).sample
        got = ours(x, t)
        scalar_t = ours(x[:1], 417)
        expected_scalar = ref(x[:1], torch.tensor(417)).sample
    assert expected.abs().mean() > 1e-2  # the comparison is not of two near-zero tensors
    assert (got - expected).abs().max().item() <= 1e-5
    assert (scalar_t - expected_scalar).abs().max().item() <= 1e-5  # a plain int t broadcasts over the batch


def test_dropout_only_in_training():
    cfg = UNetConfig(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        dropout=0.5,
    )
    model = UNet(cfg)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 6])
    model.train()
    assert not torch.equal(model(x, t), model(x, t))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))


def test_old_attention_names_are_mapped():
    from conftest import GOOGLE_TINY, random_diffusers_unet

    ref = random_diffusers_unet(GOOGLE_TINY)
    old = old_attention_names(ref.state_dict())
    assert any(".query." in k for k in old) and any(".proj_attn." in k for k in old)
    assert convert_state_dict(old).keys() == ref.state_dict().keys()


@pytest.mark.parametrize("bad,message", [
    (dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D")), "Unsupported block type 'CrossAttnDownBlock2D'"),
    (dict(up_block_types=("UpBlock2D",)), "up_block_types has 1 entries"),
    (dict(sample_size=15), "sample_size 15 is not divisible by 2"),
    (dict(block_out_channels=(30, 60)), "multiples of norm_num_groups"),
    (dict(time_embedding_type="fourier"), "time_embedding_type='fourier'"),
    (dict(sample_size=(16, 32)), "Only square images"),
])
def test_config_errors_name_the_problem(bad, message):
    base = dict(sample_size=16, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        UNetConfig(**{**base, **bad})


def test_mismatched_state_dict_lists_the_keys():
    cfg = UNetConfig(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 32),
                     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    state = UNet(cfg).state_dict()
    state.pop("conv_out.bias")
    state["extra.weight"] = torch.zeros(1)
    state["conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    with pytest.raises(ValueError) as e:
        load_state_dict_strict(UNet(cfg), state)
    msg = str(e.value)
    assert "missing keys: conv_out.bias" in msg and "unexpected keys: extra.weight" in msg and "conv_in.weight" in msg


def test_config_round_trips_through_diffusers_dict():
    cfg = UNetConfig(sample_size=16, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                     up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    d = cfg.to_dict()
    assert d["_class_name"] == "UNet2DModel" and d["block_out_channels"] == [32, 64]
    with pytest.warns(UserWarning, match="bogus_key"):
        again = UNetConfig.from_dict({**d, "bogus_key": 1, "_use_default_values": ["norm_eps"], "norm_eps": 0.5})
    assert again == cfg


COND_CASES = [  # (class_embed_type, num_class_embeds, labels)
    (None, 11, torch.tensor([0, 7, 10])),
    ("timestep", None, torch.tensor([0, 7, 10])),
    ("identity", None, None),  # embedding vectors, made in the test
]


@pytest.mark.parametrize("embed_type,num,labels", COND_CASES)
def test_class_conditional_forward_matches_diffusers(embed_type, num, labels, tmp_path):
    from diffusers import UNet2DModel

    from diffusion.hub import write_folder

    from conftest import DIFFUSERS_TINY, random_diffusers_unet

    kwargs = dict(DIFFUSERS_TINY, class_embed_type=embed_type, num_class_embeds=num)
    ref = random_diffusers_unet(kwargs, std=0.05)
    ours = UNet(UNetConfig(**kwargs)).eval()
    load_state_dict_strict(ours, ref.state_dict())
    assert set(ours.state_dict()) == set(ref.state_dict())
    if embed_type is None:
        assert "class_embedding.weight" in ours.state_dict()
    if embed_type == "timestep":
        assert "class_embedding.linear_1.weight" in ours.state_dict()
    torch.manual_seed(1)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 417, 999])
    if labels is None:
        labels = torch.randn(3, ours.config.time_embed_dim)
    with torch.no_grad():
        expected = ref(x, t, class_labels=labels).sample
        got = ours(x, t, class_labels=labels)
        other = ours(x, t, class_labels=labels.flip(0))
    assert (got - expected).abs().max().item() <= 1e-5
    assert (other - got).abs().max().item() > 1e-4  # the labels change the output, beyond the tolerance
    # ours saves in a form diffusers loads, with the same outputs
    write_folder(tmp_path, ours.config.to_dict(), ours.state_dict(), {"num_train_timesteps": 1000})
    again = UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    with torch.no_grad():
        assert (again(x, t, class_labels=labels).sample - got).abs().max().item() <= 1e-5


def test_class_labels_errors_say_what_to_do():
    from conftest import DIFFUSERS_TINY

    cond = UNet(UNetConfig(**DIFFUSERS_TINY, num_class_embeds=11)).eval()
    plain = UNet(UNetConfig(**DIFFUSERS_TINY)).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 4])
    with torch.no_grad():
        with pytest.raises(ValueError, match="class-conditional: give class_labels"):
            cond(x, t)
        with pytest.raises(ValueError, match="out of range; this model knows labels 0 to 10"):
            cond(x, t, class_labels=torch.tensor([1, 11]))
        with pytest.raises(ValueError, match="out of range"):
            cond(x, t, class_labels=torch.tensor([-1, 2]))
        with pytest.raises(ValueError, match="whole-number class indices"):
            cond(x, t, class_labels=torch.tensor([1.0, 2.0]))
        with pytest.raises(ValueError, match=r"expected \(2,\), one per image"):
            cond(x, t, class_labels=torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match="unconditional"):
            plain(x, t, class_labels=torch.tensor([1, 2]))
        one = cond(x, t, class_labels=3)  # one label for every image
        assert torch.equal(one, cond(x, t, class_labels=torch.tensor([3, 3])))
    with pytest.raises(ValueError, match="class_embed_type 'bogus'"):
        UNetConfig(**DIFFUSERS_TINY, class_embed_type="bogus")
    with pytest.raises(ValueError, match="num_class_embeds must be a whole number"):
        UNetConfig(**DIFFUSERS_TINY, num_class_embeds=0)
