"""Pictures: grids and animations are written whole (atomic), readable, and with the frames given."""

from __future__ import annotations

import imageio.v2 as iio2
import numpy as np
import pytest
import torch

from diffusion.images import save_animation, save_grid, to_uint8


def frames(n: int = 6, channels: int = 1) -> list[np.ndarray]:
    return [np.full((28, 27, channels), 40 * i, np.uint8) for i in range(n)]  # odd width: H.264 needs padding


@pytest.mark.parametrize("channels", [1, 3])
def test_gif_and_mp4_hold_the_frames(tmp_path, channels):
    gif = save_animation(frames(channels=channels), tmp_path / "a.gif", fps=5)
    got = np.stack(iio2.mimread(gif))
    assert got.shape[0] == 6 and abs(int(got[3, ..., 0].mean()) - 120) <= 2
    mp4 = save_animation(frames(channels=channels), tmp_path / "a.mp4", fps=5)
    with iio2.get_reader(mp4, format="FFMPEG") as r:
        video = [f for f in r]
    assert len(video) == 6 and video[0].shape[:2] == (28, 28)
    assert abs(float(video[4][..., 0].mean()) - 160) < 6  # lossy, but the right frame
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.mp4"]  # no temporary files left


def test_unknown_animation_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        save_animation(frames(), tmp_path / "a.avi")
    assert not list(tmp_path.iterdir())


def test_grid_and_uint8(tmp_path):
    images = torch.linspace(0, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    assert to_uint8(images).shape == (4, 8, 8, 3) and to_uint8(images).max() == 255
    g = save_grid(images, tmp_path / "g.png", nrow=2)
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2) == tuple(g.shape[1:])
