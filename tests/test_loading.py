"""Checkpoints written by diffusers load into our pipeline, ours load into diffusers, bad ones fail clearly."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import diffusion
from diffusion import CheckpointError
from diffusion.files import TEMP_NAME

from conftest import DIFFUSERS_TINY, GOOGLE_TINY, write_diffusers_checkpoint


def outputs(unet_fn, config):
    torch.manual_seed(0)
    x = torch.randn(2, config["in_channels"], config["sample_size"], config["sample_size"])
    with torch.no_grad():
        out = unet_fn(x, torch.tensor([1, 800]))
    return getattr(out, "sample", out)


@pytest.mark.parametrize("layout", ["flat", "subfolder"])
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
@pytest.mark.parametrize("old_names", [False, True])
@pytest.mark.parametrize("config", [GOOGLE_TINY, DIFFUSERS_TINY], ids=["google", "diffusers"])
def test_diffusers_checkpoints_load(tmp_path, layout, weights, old_names, config):
    ref = write_diffusers_checkpoint(tmp_path, config, layout, weights, old_names,
                                     scheduler={"variance_type": "fixed_large", "clip_sample": False})
    pipe = diffusion.load(tmp_path)  # strict: any missing or unexpected key raises
    assert (outputs(pipe.unet, config) - outputs(ref, config)).abs().max().item() <= 1e-5
    assert pipe.config["variance_type"] == "fixed_large" and pipe.sampler_options("ddpm").variance_type == "fixed_large"
    assert pipe.sampler_options("ddim").clip_sample is False


def test_safetensors_preferred_over_bin(tmp_path):
    write_diffusers_checkpoint(tmp_path, DIFFUSERS_TINY, "flat", "safetensors", seed=0)
    torch.save({"garbage": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.bin")
    diffusion.load(tmp_path)  # would fail on the .bin


def test_our_save_loads_in_diffusers(tmp_path, google_checkpoint):
    from diffusers import DDPMPipeline, UNet2DModel

    pipe = diffusion.load(google_checkpoint[0])
    out = pipe.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "scheduler", "unet"]
    assert not [p for p in out.rglob(".*") if TEMP_NAME.fullmatch(p.name)]
    theirs = UNet2DModel.from_pretrained(out, subfolder="unet").eval()
    assert (outputs(theirs, GOOGLE_TINY) - outputs(pipe.unet, GOOGLE_TINY)).abs().max().item() <= 1e-5
    ddpm = DDPMPipeline.from_pretrained(out)
    images = ddpm(
        batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=5, output_type="pt"
    ).images
    ours = pipe.sample("ddpm", n=1, seed=0, num_inference_steps=5)
    assert (images - ours).abs().max().item() <= 1e-4
    again = diffusion.load(out)
    assert again.config == pipe.config


def test_push_to_hub_uploads_a_loadable_folder(tmp_path, diffusers_checkpoint, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["loaded"] = diffusion.load(folder_path).unet.config
            return f"https://hub/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    pipe = diffusion.load(diffusers_checkpoint[0])
    assert pipe.push_to_hub("me/tiny", private=True).endswith("commit/1")
    assert calls["create"] == ("me/tiny", True, True) and calls["loaded"] == pipe.unet.config


class NotATensor:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickle_with_code_is_refused(tmp_path):
    write_diffusers_checkpoint(tmp_path, DIFFUSERS_TINY, "flat", "bin")
    state = torch.load(tmp_path / "diffusion_pytorch_model.bin", weights_only=True)
    with open(tmp_path / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({**state, "payload": NotATensor()}, f)
    with pytest.raises(CheckpointError, match="Refusing to load .*other than tensors"):
        diffusion.load(tmp_path)


def test_truncated_safetensors_is_reported(tmp_path):
    write_diffusers_checkpoint(tmp_path, DIFFUSERS_TINY, "subfolder")
    f = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        diffusion.load(tmp_path)


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda c: c.update(down_block_types=["CrossAttnDownBlock2D", "AttnDownBlock2D"]),
            "Unsupported block type 'CrossAttnDownBlock2D'",
        ),
        (lambda c: c.update(block_out_channels=[32, 96]), "shape mismatches"),
        (lambda c: c.update(layers_per_block=2), "missing keys"),
        (lambda c: c.update(_class_name="UNet2DConditionModel"), "only pixel-space DDPM models"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, change, message):
    write_diffusers_checkpoint(tmp_path, DIFFUSERS_TINY, "subfolder")
    path = tmp_path / "unet" / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        diffusion.load(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="No config.json"):
        diffusion.load(tmp_path)
    write_diffusers_checkpoint(tmp_path, DIFFUSERS_TINY, "subfolder")
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="No weights next to"):
        diffusion.load(tmp_path)
    with pytest.raises(CheckpointError, match="No model folder at ./does/not/exist"):
        diffusion.load("./does/not/exist")
    with pytest.raises(CheckpointError, match="is a file"):
        diffusion.load(tmp_path / "unet" / "config.json")


def test_broken_json_and_unsupported_scheduler(tmp_path):
    write_diffusers_checkpoint(tmp_path, DIFFUSERS_TINY, "subfolder")
    (tmp_path / "scheduler" / "scheduler_config.json").write_text('{"variance_type": "learned_range"}')
    with pytest.raises(CheckpointError, match="predicts its own variance"):
        diffusion.load(tmp_path)
    (tmp_path / "unet" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        diffusion.load(tmp_path)


def test_missing_scheduler_config_uses_diffusers_defaults(tmp_path):
    write_diffusers_checkpoint(tmp_path, DIFFUSERS_TINY, "flat")
    (tmp_path / "scheduler_config.json").unlink()
    pipe = diffusion.load(tmp_path)
    assert pipe.config["beta_schedule"] == "linear" and pipe.sampler_options("ddim").clip_sample is True
