"""The Explore tab's handlers: interpolation, reconstruction and refused uploads, consistency."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from studio import settings

from conftest import a_picture, make_studio, png, run_all

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- explore


@pytest.fixture(scope="module")
def explore(studio):
    from studio.explore import Explore

    return Explore(studio)


def test_explore_interpolates_between_seeds_and_between_images(explore, tmp_path):
    outs = run_all(explore.interpolate(explore.studio.default_model, 3, 4, 5, 4))
    strip, gif, info = outs[-1]
    assert png(strip).shape[1] >= settings.DISPLAY_PX and "5 frames" in info and "seeds 3 and 4" in info
    import imageio.v3 as iio

    assert iio.imread(gif, index=None).shape[0] == 5 + 3  # there and back
    # the ends are the seeds' own DDIM samples
    alone = [
        png(run_all(explore.studio.sample(explore.studio.default_model, "ddim", s, 1, steps=4, eta=0.0))[-1][0])
        for s in (3, 4)
    ]
    tiles = png(strip)
    assert tiles.shape[0] > 0 and not np.array_equal(alone[0], alone[1])
    img = a_picture(tmp_path)
    outs = run_all(
        explore.interpolate(
            explore.studio.default_model, 0, 0, 3, 3, image_a=img, image_b=a_picture(tmp_path, "b.png", mode="L")
        )
    )
    assert "images' DDIM latents" in outs[-1][2]
    with pytest.raises(gr.Error, match="Frames"):
        run_all(explore.interpolate(explore.studio.default_model, 0, 1, 1, 4))
    with pytest.raises(gr.Error, match="image B"):
        run_all(explore.interpolate(explore.studio.default_model, 0, 1, 3, 4, image_a=img))


def test_explore_reconstructs_an_image_and_refuses_bad_uploads(explore, tmp_path):
    *_, (inp, latent, recon, info) = run_all(explore.reconstruct(explore.studio.default_model, a_picture(tmp_path), 5))
    assert png(inp).shape == png(latent).shape == png(recon).shape and "per-dimension MSE" in info
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    for path, message in [
        (None, "Upload"),
        (str(not_image), r"The image \(notes.png\) cannot be used: not an image file \(PNG, JPEG"),
        (str(tmp_path / "gone.png"), r"\(gone.png\) cannot be used: the uploaded file is gone .*; upload it again"),
    ]:
        with pytest.raises(gr.Error, match=message):
            run_all(explore.reconstruct(explore.studio.default_model, path, 5))
    big = tmp_path / "big.png"
    Image.new("L", (5000, 5000)).save(big)
    with pytest.raises(gr.Error, match="at most 4096"):
        run_all(explore.reconstruct(explore.studio.default_model, str(big), 5))
    wide = tmp_path / "wide.png"
    Image.new("RGB", (56, 28), (200, 30, 30)).save(wide)
    *_, (_, _, _, info) = run_all(explore.reconstruct(explore.studio.default_model, str(wide), 2))
    said = "colour made grey (ITU-R 601 luma), centre-cropped from 56×28 to 28×28, resized from 28×28 to 8×8"
    assert info.endswith(f" · the input: {said}"), info
    with pytest.raises(gr.Error, match="whole number"):
        run_all(explore.reconstruct(explore.studio.default_model, a_picture(tmp_path), 2.5))
    fig, table = run_all(explore.error_curve(explore.studio.default_model, a_picture(tmp_path)))[-1]
    assert len(fig.axes) == 1 and "| steps | MSE per dimension |" in table and "| 100 |" in table


def test_explore_consistency_one_row_per_step_count(explore):
    *_, (grid, info) = run_all(explore.consistency(explore.studio.default_model, 2, 3, [10, 5]))
    assert "5, 10 steps" in info and Image.open(grid).size[1] > 0
    with pytest.raises(gr.Error, match="at least one"):
        run_all(explore.consistency(explore.studio.default_model, 2, 3, []))
    studio = make_studio(explore.studio.default_model, max_work=1000)
    from studio.explore import Explore

    with pytest.raises(gr.Error, match="budget"):
        run_all(Explore(studio).consistency(studio.default_model, 0, 8, [1000]))
