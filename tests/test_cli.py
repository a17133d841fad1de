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


# --mode interpolate / reconstruct / consistency: DDIM latents (diffusion.latents)


def _images(folder, n=3, size=20, mode="RGB"):
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).convert(mode).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("skipped")
    return folder


def test_cli_interpolate_writes_a_strip(tmp_path, diffusers_checkpoint, capsys):
    path, _ = diffusers_checkpoint
    out = tmp_path / "strip.png"
    argv = ["--model", str(path), "--mode", "interpolate", "--seed", "1", "--seed-b", "2", "--frames", "5",
            "--steps", "3", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert Image.open(out).size == (2 + 5 * 18, 2 + 18)  # one row of 5 images of 16 px
    assert "saved 5 images from seed 1 to 2" in capsys.readouterr().out


def test_cli_reconstruct_a_folder_and_a_file(tmp_path, diffusers_checkpoint, capsys):
    path, _ = diffusers_checkpoint
    folder = _images(tmp_path / "in", n=3)
    out, process = tmp_path / "recon.png", tmp_path / "process.png"
    argv = ["--model", str(path), "--mode", "reconstruct", "--input", str(folder), "--steps", "4", "--out", str(out),
            "--process", str(process), "--device", "cpu"]
    assert main(argv) == 0
    assert Image.open(out).size == (2 + 2 * 18, 2 + 2 * 18)  # 3 reconstructions, 2x2 grid
    assert Image.open(process).size == (2 + 3 * 18, 2 + 3 * 18)  # input, latent, reconstruction per row
    text = capsys.readouterr().out
    assert "saved 3 reconstructions" in text and "MSE per dimension" in text
    mse = float(text.rsplit(":", 1)[1])
    assert 0 <= mse <= 1
    assert main(["--model", str(path), "--mode", "reconstruct", "--input", str(folder / "img1.png"), "--steps", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "saved 1 reconstructions" in capsys.readouterr().out


def test_cli_consistency_one_row_per_step_count(tmp_path, diffusers_checkpoint, capsys):
    path, _ = diffusers_checkpoint
    out = tmp_path / "rows.png"
    assert main(["--model", str(path), "--mode", "consistency", "--steps", "2,5,3", "-n", "2", "--seed", "4",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert Image.open(out).size == (2 + 2 * 18, 2 + 3 * 18)
    assert "saved 3 rows (2, 5, 3 steps) of 2 images" in capsys.readouterr().out


def test_cli_explore_errors_are_messages(tmp_path, diffusers_checkpoint, capsys):
    path, _ = diffusers_checkpoint
    folder = _images(tmp_path / "in", n=2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "fake.png").write_text("not an image")
    out = str(tmp_path / "x.png")
    model = ["--model", str(path), "--out", out, "--device", "cpu"]
    cases = [
        (["--mode", "interpolate"], "needs --seed-b"),
        (["--mode", "interpolate", "--seed-b", "2", "--frames", "1"], "out of range"),
        (["--mode", "interpolate", "--seed-b", "2", "--sampler", "ddpm"], "ddim sampler"),
        (["--mode", "interpolate", "--seed-b", "2", "--eta", "0.5"], "eta"),
        (["--mode", "reconstruct"], "needs --input"),
        (["--mode", "reconstruct", "--input", str(tmp_path / "missing")], "no such file"),
        (["--mode", "reconstruct", "--input", str(tmp_path / "empty")], "no image files"),
        (
            ["--mode", "reconstruct", "--input", str(tmp_path / "fake.png")],
            "fake.png: not an image file (PNG, JPEG, WebP, GIF, BMP and TIFF are read).",
        ),
        (["--mode", "reconstruct", "--input", str(folder), "--spacing", "linspace"], "leading' or 'trailing"),
        (["--mode", "reconstruct", "--input", str(folder), "--process", out], "same file"),
        (["--mode", "consistency"], "needs --steps"),
        (["--mode", "consistency", "--steps", "2,x"], "not a whole number"),
        (["--mode", "consistency", "--steps", "2,5000"], "between 1 and 1000"),
        (["--mode", "consistency", "--steps", "2", "--process", str(tmp_path / "p.png")], "--process is for"),
        (["--steps", "2,3"], "--mode consistency only"),
    ]
    for extra, message in cases:
        try:
            status = main(model + extra)
        except SystemExit as e:  # argparse's refusals
            status = e.code
        assert status == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp_path / "x.png").exists()


def test_cli_too_many_images(tmp_path, diffusers_checkpoint, capsys, monkeypatch):
    import diffusion.images

    path, _ = diffusers_checkpoint
    folder = _images(tmp_path / "in", n=3, mode="L")
    monkeypatch.setattr(diffusion.images.read_images, "__defaults__", (2,))
    assert main(["--model", str(path), "--mode", "reconstruct", "--input", str(folder), "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "3 images; at most 2" in capsys.readouterr().err
