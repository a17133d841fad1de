"""python -m diffusion.sample: images, the denoising process, and clear errors."""

from __future__ import annotations

from PIL import Image

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
