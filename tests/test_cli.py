"""python -m diffusion.sample: images, the denoising process, and clear errors."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffusion.pipeline import to_unit
from diffusion.sample import main


def test_cli_writes_grid_and_process(tmp_path, diffusers_checkpoint, capsys):
    path, _ = diffusers_checkpoint
    out, process = tmp_path / "grid.png", tmp_path / "process.png"
    assert main(["--model", str(path), "--sampler", "ddim", "--steps", "4", "--eta", "0.5", "--seed", "1", "-n", "3",
                 "--out", str(out), "--process", str(process), "--process-frames", "3", "--device", "cpu"]) == 0
    grid = Image.open(out)
    assert grid.size == (2 + 2 * 18, 2 + 2 * 18)  # 3 images of 16 px on a 2x2 grid with 2 px padding
    assert Image.open(process).size[0] > grid.size[0]
    assert "saved 3 images" in capsys.readouterr().out


def test_cli_errors_are_messages(tmp_path, diffusers_checkpoint, capsys):
    path, _ = diffusers_checkpoint
    assert main(["--model", str(path), "--sampler", "ddpm", "--eta", "0.3", "--out", str(tmp_path / "x.png")]) == 2
    assert "Sampler 'ddpm' has no option 'eta'" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x.png")]) == 2
    assert "No model folder" in capsys.readouterr().err
    assert main(["--model", str(path), "--steps", "5000", "--out", str(tmp_path / "x.png")]) == 2
    assert "between 1 and 1000" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("layout", ["google", "diffusers"])
def test_cli_dpm_solver_with_karras_sigmas_runs_as_diffusers(tmp_path, layout, request, monkeypatch, capsys):
    """``--sampler dpm-solver++ --steps 20 --option use_karras_sigmas=true`` on a google-layout (flat, old
    attention names) and a diffusers-layout checkpoint: the samples of diffusers' DPMSolverMultistepScheduler
    with use_karras_sigmas=True from the same scheduler config, UNet and seed."""
    from diffusers import DPMSolverMultistepScheduler

    import diffusion.pipeline
    import diffusion.sample as cli

    path, unet = request.getfixturevalue(f"{layout}_checkpoint")
    raw = []
    monkeypatch.setattr(diffusion.pipeline, "to_unit", lambda x: raw.append(x) or to_unit(x))
    assert (
        cli.main(
            [
                "--model",
                str(path),
                "--sampler",
                "dpm-solver++",
                "--steps",
                "20",
                "--option",
                "use_karras_sigmas=true",
                "-n",
                "2",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "grid.png"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "use_karras_sigmas=True" in capsys.readouterr().out and (tmp_path / "grid.png").exists()
    scheduler = DPMSolverMultistepScheduler.from_pretrained(
        path, use_karras_sigmas=True, **({"subfolder": "scheduler"} if layout == "diffusers" else {})
    )
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size), generator=generator)
    scheduler.set_timesteps(20)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
    assert (raw[0] - x).abs().max().item() <= 1e-4 * max(1.0, x.abs().max().item())
