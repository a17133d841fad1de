"""Issue #24, classes 2 and 6: input images are read with their real range and orientation or refused with the
reason, every change made to read one is said, and an upload's size is read from its header before it is
decoded. Table-driven over the pixel formats Pillow opens; the studio's uploads are deleted when refused."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import diffusion.sample as cli
from diffusion.images import image_to_array, images_to_tensor, open_image, read_images

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "checkpoints" / "fashion-mnist"


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (8-bit grey): what a hostile upload of a few bytes looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def noise_png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


RAMP16 = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)


def save(image: Image.Image, **kwargs) -> Callable[[Path], None]:
    return lambda p: image.save(p, **kwargs)


def palette_with_transparency() -> Image.Image:
    im = Image.new("P", (28, 28), 1)
    im.putpalette([0, 0, 0] + [200, 200, 200] * 255)
    im.paste(0, (0, 0, 14, 28))  # left half: index 0, declared transparent
    return im


def rotated_jpeg(p: Path) -> None:
    """40 wide, 20 high, left half black; EXIF orientation 6 (turn 90 degrees clockwise to view)."""
    arr = np.full((20, 40, 3), 255, np.uint8)
    arr[:, :20] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(p, exif=exif, quality=95)


def animated_gif(p: Path) -> None:
    Image.new("L", (28, 28), 200).save(p, save_all=True, append_images=[Image.new("L", (28, 28), 0)])


def half_transparent(p: Path) -> None:
    arr = np.zeros((28, 28, 4), np.uint8)
    arr[..., 3] = 0  # transparent black everywhere: white once flattened
    arr[:, 14:, 3] = 255  # right half opaque black
    Image.fromarray(arr, "RGBA").save(p)


# name: (file name, writer, channels, expected mean (None: don't check), notes wanted, refusal message)
READ_CASES = {
    "16-bit grey PNG": ("g16.png", save(Image.fromarray(RAMP16)), 1, 0.5, [], None),
    "16-bit grey PNG, 3 channels": ("g16.png", save(Image.fromarray(RAMP16)), 3, 0.5, [], None),
    "float TIFF in [0, 1]": ("f.tiff", save(Image.fromarray(np.full((28, 28), 0.25, np.float32))), 1, 0.25, [], None),
    "float TIFF in [0, 255]": (
        "f.tiff", save(Image.fromarray(np.full((28, 28), 200.0, np.float32))), 1, None, [],
        "its floating-point pixels run from 200 to 200; floats are read as [0, 1]",
    ),
    "float TIFF with NaN": (
        "f.tiff", save(Image.fromarray(np.full((28, 28), np.nan, np.float32))), 1, None, [],
        "its floating-point pixels include NaN or infinity",
    ),
    "32-bit integer TIFF beyond 16 bits": (
        "i.tiff", save(Image.fromarray(np.full((28, 28), 10**6, np.int32))), 1, None, [],
        "its 32-bit integer pixels run from 1000000 to 1000000, beyond 16 bits",
    ),
    "palette PNG with transparency": (
        "p.png", save(palette_with_transparency(), transparency=0), 1, (1.0 + 200 / 255) / 2,
        ["transparency flattened onto white"], None,
    ),
    "RGBA half transparent": ("a.png", half_transparent, 1, 0.5, ["transparency flattened onto white"], None),
    "LA opaque": ("la.png", save(Image.new("LA", (28, 28), (51, 255))), 1, 0.2, [], None),
    "EXIF-rotated JPEG": (
        "r.jpg", rotated_jpeg, 1, None,
        ["turned upright (EXIF orientation 6)", "centre-cropped from 20×40 to 20×20", "resized from 20×20 to 28×28"],
        None,
    ),
    "CMYK JPEG": (
        "c.jpg", save(Image.new("CMYK", (28, 28), (0, 0, 0, 0))), 1, 1.0,
        ["CMYK converted to RGB without a colour profile"], None,
    ),
    "colour to grey": (
        "rgb.png", save(Image.new("RGB", (28, 28), (255, 0, 0))), 1, 0.299, ["colour made grey (ITU-R 601 luma)"], None
    ),
    "grey saved as RGB is not 'made grey'": ("g.png", save(Image.new("RGB", (28, 28), (51, 51, 51))), 1, 0.2, [], None),
    "1-bit": ("b.png", save(Image.new("1", (28, 28), 1)), 1, 1.0, [], None),
    "animated GIF": ("anim.gif", animated_gif, 1, 200 / 255, ["the first of its 2 frames"], None),
    "wide image": (
        "w.png", save(Image.new("L", (56, 28), 0)), 1, 0.0, ["centre-cropped from 56×28 to 28×28"], None
    ),
    "small image": ("s.png", save(Image.new("L", (14, 14), 255)), 1, 1.0, ["resized from 14×14 to 28×28"], None),
    "header of 12000x12000": (
        "bomb.png", lambda p: p.write_bytes(png_header(12000, 12000)), 1, None, [],
        "12000×12000 pixels; give an image of at most 4096×4096 pixels.",
    ),
    "header past Pillow's limit": (
        "bomb.png", lambda p: p.write_bytes(png_header(20000, 20000)), 1, None, [], "more pixels than Pillow opens",
    ),
    "truncated PNG": ("t.png", lambda p: p.write_bytes(noise_png()[:300]), 1, None, [], "a damaged image file"),
    "text named .png": ("x.png", lambda p: p.write_text("hello"), 1, None, [], "not an image file (PNG, JPEG"),
    "empty file": ("e.png", lambda p: p.write_bytes(b""), 1, None, [], "not an image file"),
}


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail any decode: a refusal by size must come from the header alone."""
    def decode(self):
        raise AssertionError(f"{self.size} decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)


@pytest.mark.parametrize("case", READ_CASES, ids=list(READ_CASES))
def test_every_pixel_format_is_read_by_its_range_or_refused(case, tmp_path, request):
    name, write, channels, mean, notes, refusal = READ_CASES[case]
    path = tmp_path / name
    write(path)
    if refusal and "pixels;" in refusal:
        request.getfixturevalue("no_decoding")
    if refusal:
        with pytest.raises(ValueError) as e:
            images_to_tensor(read_images(path), channels, 28)
        assert refusal in str(e.value) and str(e.value).count("\n") == 0
        return
    (image,) = read_images(path)
    x, (said,) = images_to_tensor([image], channels, 28)
    assert x.shape == (1, channels, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    if mean is not None:
        assert x.mean().item() == pytest.approx(mean, abs=0.02)
    assert said == ", ".join(notes)


@pytest.mark.parametrize("case", [c for c, v in READ_CASES.items() if v[5] and "image file" not in v[5]
                                  and "pixels;" not in v[5] and "Pillow" not in v[5]])
def test_pixels_that_cannot_be_read_are_refused_with_the_file_name(case, tmp_path):
    name, write, channels, _, _, refusal = READ_CASES[case]
    write(tmp_path / name)
    (image,) = read_images(tmp_path / name)
    with pytest.raises(ValueError) as e:
        images_to_tensor([image], channels, 28)
    assert str(e.value).startswith(f"{name}: ") and refusal in str(e.value)


def test_the_exif_orientation_is_applied(tmp_path):
    """Stored 40x20 with the left half black; turned clockwise it is 20x40 with the top half black."""
    rotated_jpeg(tmp_path / "r.jpg")
    x, _ = image_to_array(open_image(tmp_path / "r.jpg"), 1, 20)
    assert x[:5].mean() < 0.1 and x[-5:].mean() > 0.9  # centre crop of the upright image: black above white


def test_sixteen_bit_keeps_its_levels(tmp_path):
    """Not clipped to white (Pillow's convert("L") would) and not quantised to 8 bits."""
    Image.fromarray(RAMP16).save(tmp_path / "g16.png")
    x, _ = image_to_array(open_image(tmp_path / "g16.png"), 1, 28)
    assert np.allclose(x[..., 0], RAMP16 / 65535, atol=1e-6)


def test_cli_reconstruct_says_how_it_read_the_inputs(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((32, 32), 30_000, np.uint16)).save(folder / "a.png")
    Image.new("RGB", (56, 28), (255, 0, 0)).save(folder / "b.png")
    out = tmp_path / "r.png"
    code = cli.main(["--model", str(BUNDLED), "--mode", "reconstruct", "--input", str(folder), "--steps", "2",
                     "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "read a.png: resized from 32×32 to 28×28" in printed
    assert "read b.png: colour made grey (ITU-R 601 luma), centre-cropped from 56×28 to 28×28" in printed


def test_cli_refuses_an_image_bomb_before_loading_the_model(tmp_path, capsys, monkeypatch, no_decoding):
    (tmp_path / "bomb.png").write_bytes(png_header(12000, 12000))
    monkeypatch.setattr(cli, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    code = cli.main(["--model", str(BUNDLED), "--mode", "reconstruct", "--input", str(tmp_path / "bomb.png"),
                     "--out", str(tmp_path / "r.png"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {tmp_path / 'bomb.png'}: 12000×12000 pixels; give an image of at most " \
        "4096×4096 pixels.\n"


def test_training_folders_read_sixteen_bit_images(tmp_path):
    from training.data import load_images

    Image.fromarray(RAMP16).save(tmp_path / "g16.png")
    data = load_images("folder", str(tmp_path), image_size=28, channels=1)
    assert data.dtype == torch.uint8 and data.shape == (1, 1, 28, 28)
    assert abs(data.float().mean().item() - 127.5) < 1 and data.max() == 255


# ----------------------------------------------------------------------------- the studio's uploads

UPLOAD_CASES = {
    "image bomb": (lambda p: p.write_bytes(png_header(12000, 12000)), "12000×12000 pixels; give an image of at"),
    "not an image": (lambda p: p.write_text("hello"), "not an image file (PNG, JPEG, WebP, GIF, BMP and TIFF"),
    "float out of range": (
        save(Image.fromarray(np.full((8, 8), 3.0, np.float32))), "its floating-point pixels run from 3 to 3"
    ),
    "too many bytes": (lambda p: p.write_bytes(b"\0" * (20 * 2**20 + 1)), "20.0 MB; upload one under 20 MB."),
}


@pytest.fixture
def upload_folder(tmp_path, monkeypatch):
    """Gradio's upload folder, in a temp folder."""
    folder = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder


@pytest.mark.parametrize("case", UPLOAD_CASES, ids=list(UPLOAD_CASES))
def test_refused_uploads_are_said_and_deleted(case, upload_folder, request):
    import gradio as gr

    from diffusion import DiffusionPipeline
    from studio.explore import read_upload

    write, message = UPLOAD_CASES[case]
    if case == "image bomb":
        request.getfixturevalue("no_decoding")
    path = upload_folder / "0123abcd" / "upload.tiff"
    path.parent.mkdir(parents=True)
    write(path)
    pipe = DiffusionPipeline.from_pretrained(BUNDLED)
    with pytest.raises(gr.Error) as e:
        read_upload(str(path), pipe, "image A")
    assert str(e.value.message).startswith("Image A (upload.tiff) cannot be used: ") and message in e.value.message
    assert not path.exists() and not path.parent.exists() and upload_folder.exists()


def test_an_upload_outside_gradios_folder_is_never_deleted(tmp_path, upload_folder):
    import gradio as gr

    from diffusion import DiffusionPipeline
    from studio.explore import read_upload

    elsewhere = tmp_path / "mine.png"
    elsewhere.write_text("not an image")
    with pytest.raises(gr.Error, match="not an image file"):
        read_upload(str(elsewhere), DiffusionPipeline.from_pretrained(BUNDLED))
    assert elsewhere.read_text() == "not an image"


def test_an_accepted_upload_says_what_was_changed(upload_folder):
    from diffusion import DiffusionPipeline
    from studio.explore import read_upload

    path = upload_folder / "ab" / "photo.png"
    path.parent.mkdir(parents=True)
    Image.new("RGB", (60, 40), (0, 0, 255)).save(path)
    x, note = read_upload(str(path), DiffusionPipeline.from_pretrained(BUNDLED))
    assert x.shape == (1, 1, 28, 28) and path.exists()
    assert note == "colour made grey (ITU-R 601 luma), centre-cropped from 60×40 to 40×40, resized from 40×40 to 28×28"


def test_gradio_refuses_big_uploads_itself():
    from studio.settings import MAX_UPLOAD_BYTES
    from studio.ui import launch_kwargs

    assert launch_kwargs()["max_file_size"] == MAX_UPLOAD_BYTES == 20 * 2**20


def test_the_studio_deletes_its_output_folders_when_stopped(tmp_path, monkeypatch, upload_folder):
    """SIGTERM (how Spaces and docker stop a server) unwinds like Ctrl+C: this run's output folder is deleted."""
    import os
    import signal

    import studio.main

    made = {}

    def serve(demo, **kwargs):
        made["folder"] = studio_instance["studio"].outputs.new()
        (made["folder"] / "grid.png").write_bytes(b"x")
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the server")

    studio_instance = {}
    real_studio = studio.main.Studio

    def keep(settings):
        studio_instance["studio"] = real_studio(settings)
        return studio_instance["studio"]

    monkeypatch.setattr(studio.main, "Studio", keep)
    monkeypatch.setattr(studio.main, "launch", serve)
    monkeypatch.setattr(studio.main, "build_app", lambda s: None)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as e:
            studio.main.main(["--no-compile"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert e.value.code == 0 and made["folder"].parent.parent == upload_folder / "studio"
    assert not made["folder"].parent.exists()


def test_the_upload_box_hands_over_the_file_unopened(tmp_path):
    """Gradio's gr.Image would open the upload and convert it to RGB before the handler runs (a 16-bit PNG turns
    white, a damaged file is a bare "Error"); the studio's box passes the path, and the page draws a gr.Image."""
    import gradio as gr
    from gradio.data_classes import ImageData

    from studio.widgets import image_upload

    (tmp_path / "x.png").write_text("not an image")
    with gr.Blocks() as demo:
        box = image_upload(label="An image")
    assert box.preprocess(ImageData(path=str(tmp_path / "x.png"), orig_name="x.png")) == str(tmp_path / "x.png")
    assert box.preprocess(None) is None
    (config,) = demo.get_config_file()["components"]
    assert config["type"] == "image" and config["props"]["sources"] == ["upload"]
    assert not list((ROOT / "studio").glob("*.pyi"))  # no gr.Image subclass: Gradio writes none
