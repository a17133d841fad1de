"""The Explore tab's handlers: x_T as DDIM's latent code (Song et al. 2021, Sec. 5.2-5.4) through
:mod:`diffusion.latents` and :mod:`diffusion.latent_tasks`: interpolation between seeds or images, inversion
and reconstruction of an image, and one x_T decoded at several step counts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import gradio as gr
import torch
from gradio.utils import get_upload_folder

import diffusion
from diffusion import latent_tasks, latents
from diffusion.images import images_to_tensor, open_image, save_grid, scale_to_unit
from diffusion.samplers import Step

from . import media
from .class_controls import read_labels
from .compute import on_compute_thread
from .errors import refused, shows_refusals
from .handlers import Studio
from .options import check_count
from .runs import Pace, running_note
from .settings import DISPLAY_PX, MAX_SEED, MAX_UPLOAD_BYTES

EXAMPLES = Path(__file__).resolve().parent / "examples"  # real Fashion-MNIST test images, one per class
CONSISTENCY_STEPS = (10, 20, 50, 100, 1000)
ERROR_STEPS = (10, 20, 50, 100)
MAX_INTERPOLATION_FRAMES = 16


def example_images() -> list[str]:
    """The bundled example images (Fashion-MNIST's test split, one per class)."""
    return sorted(str(p) for p in EXAMPLES.glob("*.png"))


def read_upload(
    path: str | None, pipe: diffusion.DiffusionPipeline, what: str = "the image"
) -> tuple[torch.Tensor, str]:
    """An uploaded image file as the model's input (1, C, H, W) in [0, 1] and what was changed to make it so
    ("" if nothing), or gr.Error saying what is wrong; a refused upload is deleted from Gradio's folder."""
    if not path:
        raise refused(f"Upload {what} (or pick an example) first.")
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise ValueError(f"{size / 2**20:.1f} MB; upload one under {MAX_UPLOAD_BYTES // 2**20} MB.")
        image = open_image(p)  # its size is read from the header before it is decoded
        c, h, _ = pipe.image_shape
        x, (note,) = images_to_tensor([image], c, h)
    except (ValueError, OSError) as e:
        discard_upload(p)
        if isinstance(e, FileNotFoundError):
            reason = "the uploaded file is gone from the server (uploads are kept an hour); upload it again."
        else:
            reason = f"{e.strerror}." if isinstance(e, OSError) else str(e)
        raise refused(f"{what[0].upper()}{what[1:]} ({p.name}) cannot be used: {reason}") from None
    return x.to(pipe.device), note


def discard_upload(path: Path) -> None:
    """Delete an upload the studio refused, if it lies in Gradio's upload folder (never an example or a
    file elsewhere), and its folder once empty."""
    upload = Path(get_upload_folder()).resolve()
    try:
        target = path.resolve()
        if upload in target.parents and target.is_file():
            target.unlink()
            if target.parent != upload:
                target.parent.rmdir()
    except OSError:  # already gone, or its folder holds other files
        pass


def input_note(notes: Sequence[str], names: Sequence[str] = ("the input",)) -> str:
    """The changes made to read the inputs, as one line for a result (empty when there were none)."""
    said = [f"{name}: {note}" for name, note in zip(names, notes) if note]
    return f" · {'; '.join(said)}" if said else ""


class Explore:
    """Handlers of the Explore tab over a :class:`Studio`'s models, budget and temp folders."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def _pipe(self, model: str, steps: Any) -> tuple[diffusion.DiffusionPipeline, Any]:
        pipe = self.studio.store.get(model)
        steps = check_count(steps, "Steps", 1, pipe.schedule.num_train_timesteps)
        try:
            options = latent_tasks.decode_options(pipe, num_inference_steps=steps, eta=0.0)
        except ValueError as e:
            raise refused(str(e)) from None
        return pipe, options

    def _check_work(self, pipe: diffusion.DiffusionPipeline, model: str, images: int, evaluations: int,
                    passes: int = 1) -> None:
        self.studio.store.check_work(pipe, images, evaluations, self.studio.store.name(model), passes)

    @staticmethod
    def _drive(steps: Iterator[Step], total: int, label: str, pace: Pace) -> Iterator[torch.Tensor | str]:
        """Run a step iterator at the request's ``pace`` (:class:`studio.runs.Pace`: its beats are where Stop takes
        effect). Yields a :func:`running_note` for the result line at each beat, and at the end the last step's
        x_prev. The library's ValueErrors (a sample that turned non-finite...) are written for users: refusals."""
        yield running_note(label, 0, total, "starting")
        try:
            for beat in pace.beats(steps, total, label):
                yield running_note(label, beat.done, total)
        except ValueError as e:
            raise refused(str(e)) from None
        assert pace.last is not None
        yield pace.last.x_prev

    def _decode(self, pipe: diffusion.DiffusionPipeline, noise: torch.Tensor, options: Any, pace: Pace, label: str,
                labels: dict[str, Any] | None = None) -> Iterator[torch.Tensor | str]:
        """DDIM-decode ``noise`` (under ``labels``: the pipeline's class_labels and guidance_scale); yields
        :meth:`_drive`'s notes for the result line, then the images in [0, 1]."""
        steps = pipe.denoise("ddim", noise=noise, options=options, **(labels or {}))
        for item in self._drive(steps, options.num_inference_steps, label, pace):
            yield item if isinstance(item, str) else diffusion.to_unit(item).float().cpu()

    def _encode(self, pipe: diffusion.DiffusionPipeline, images: torch.Tensor, options: Any, pace: Pace, label: str,
                labels: dict[str, Any] | None = None) -> Iterator[torch.Tensor | str]:
        """DDIM-invert ``images`` (under ``labels``); yields notes (as :meth:`_decode`), then the latents x_T."""
        try:
            steps = pipe.invert_steps(images, options=options, **(labels or {}))
        except ValueError as e:
            raise refused(str(e)) from None
        return self._drive(steps, options.num_inference_steps, label, pace)

    # -- Interpolate -------------------------------------------------------------------------------

    @on_compute_thread
    @shows_refusals(line=2, outputs=3)
    def interpolate(
        self,
        model: str,
        seed_a: Any,
        seed_b: Any,
        frames: Any,
        steps: Any,
        image_a: str | None = None,
        image_b: str | None = None,
        class_a: str | None = None,
        class_b: str | None = None,
        guidance_scale: float | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple]:
        """A strip of ``frames`` images decoded (DDIM, eta 0) from x_T slerped between two seeds' noise, or
        between two images' latents (DDIM inversion) when both are given. A class-conditional model decodes
        the frames from ``class_a`` to ``class_b`` (their label embeddings mixed frame by frame; the same
        seeds give one x_T decoded as both classes) at ``guidance_scale``. Yields (strip PNG, GIF, info)."""
        pipe, options = self._pipe(model, steps)
        frames = check_count(frames, "Frames", 2, MAX_INTERPOLATION_FRAMES)
        la, lb = (read_labels(pipe, c, guidance_scale, one_of_each=False) for c in (class_a, class_b))
        use_images = bool(image_a) or bool(image_b)
        K = options.num_inference_steps
        grand = 2 * K if use_images else K  # both images encoded in one pass of K steps, all frames decoded in one
        self._check_work(pipe, model, frames, K + (2 * K // frames + 1 if use_images else 0), la.passes)
        w = torch.linspace(0, 1, frames, dtype=torch.float64)
        decode_labels: dict[str, Any] = {}
        if la.rows is not None:
            a, b = la.rows[0], lb.rows[0]
            mixed = pipe.classes.mix(a, b, w, pipe.unet.config.num_class_embeds) if a != b else a
            decode_labels = {"class_labels": mixed, "guidance_scale": la.scale}
        start, pace = time.perf_counter(), Pace(progress, grand)
        if use_images:
            (xa, note_a), (xb, note_b) = read_upload(image_a, pipe, "image A"), read_upload(image_b, pipe, "image B")
            x = torch.cat([xa, xb])
            encode = {} if la.rows is None else {"class_labels": [la.rows[0], lb.rows[0]], "guidance_scale": 1.0}
            for z in self._encode(pipe, x, options, pace, "Encoding the images", encode):
                if isinstance(z, str):
                    yield gr.skip(), gr.skip(), z
            ends = z
            try:
                noise = latents.slerp(ends[0], ends[1], w)
            except ValueError as e:
                raise refused(str(e)) from None
            how = "the two images' DDIM latents" + input_note([note_a, note_b], ["image A", "image B"])
        else:
            seeds = [check_count(s, "The seed", 0, MAX_SEED) for s in (seed_a, seed_b)]
            noise = latent_tasks.interpolation_latents(pipe, seeds, frames)
            how = f"seeds {seeds[0]} and {seeds[1]}"
        for images in self._decode(pipe, noise, options, pace, f"Decoding {frames} frames", decode_labels):
            if isinstance(images, str):
                yield gr.skip(), gr.skip(), images
        folder = self.studio.outputs.new()
        stem = f"{media.slug(self.studio.store.name(model))}_interpolation_{K}steps"
        per_row = -(-frames // -(-frames // 10))  # up to 10 frames a row, rows as even as they go (16: 8 + 8)
        save_grid(images, folder / f"{stem}_grid.png", nrow=frames)
        strip = media.save_png(
            media.picture(images, max(DISPLAY_PX, 112 * per_row), nrow=per_row), folder / f"{stem}.png"
        )
        tiles = [media.picture(images[i : i + 1], 192) for i in range(len(images))]
        gif = diffusion.images.save_animation(tiles + tiles[-2:0:-1], folder / f"{stem}.gif", fps=6)
        if la.rows is not None:
            names = pipe.classes.names
            how += (f" · class {names[la.rows[0]]}" if la.rows == lb.rows
                    else f" · from class {names[la.rows[0]]} to {names[lb.rows[0]]}") + f" · guidance {la.scale:g}"
        info = (
            f"**{frames} frames** slerped between {how} · DDIM {K} steps, eta 0 · {time.perf_counter() - start:.1f} s"
        )
        yield strip, str(gif), info

    # -- Invert and reconstruct --------------------------------------------------------------------

    @on_compute_thread
    @shows_refusals(line=3, outputs=4)
    def reconstruct(
        self, model: str, image: str | None, steps: Any, class_label: str | None = None,
        progress: gr.Progress = gr.Progress()
    ) -> Iterator[tuple]:
        """Encode the image into x_T (DDIM inversion) and decode it back with the same plan; a class-conditional
        model under ``class_label``, unguided (the conditional model's ODE). Yields (input, x_T shown scaled to
        [0, 1], reconstruction, info Markdown)."""
        pipe, options = self._pipe(model, steps)
        K = options.num_inference_steps
        self._check_work(pipe, model, 1, 2 * K)
        x, note = read_upload(image, pipe)
        labels = read_labels(pipe, class_label, 1.0, one_of_each=False).request()
        start, pace = time.perf_counter(), Pace(progress, 2 * K)
        yield None, None, None, running_note("Encoding", 0, K, "starting")  # the last run's pictures go
        for z in self._encode(pipe, x, options, pace, "Encoding", labels):
            if isinstance(z, str):
                yield gr.skip(), gr.skip(), gr.skip(), z
        for recon in self._decode(pipe, z, options, pace, "Decoding", labels):
            if isinstance(recon, str):
                yield gr.skip(), gr.skip(), gr.skip(), recon
        mse = latents.mse_per_dimension(x.cpu(), recon)
        folder = self.studio.outputs.new()
        pics = [
            media.save_png(media.picture(t, 256), folder / f"{name}.png")
            for name, t in (("input", x.cpu()), ("latent", scale_to_unit(z.cpu())), ("reconstruction", recon))
        ]
        under = f" under class {pipe.classes.names[labels['class_labels']]}" if labels else ""
        info = (
            f"DDIM inversion and reconstruction{under} with **{K} steps** (eta 0): per-dimension MSE "
            f"**{mse:.5f}** (images in [0, 1]) · x_T (shown scaled to [0, 1]): mean {z.mean().item():+.3f}, "
            f"std {z.std().item():.3f} "
            f"(N(0, I) has 0 and 1) · {time.perf_counter() - start:.1f} s{input_note([note])}"
        )
        yield (*pics, info)

    @on_compute_thread
    @shows_refusals(line=1, outputs=2)
    def error_curve(self, model: str, image: str | None, class_label: str | None = None,
                    progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Reconstruction error against steps (10, 20, 50, 100), as in the DDIM paper's Table 2 (a
        class-conditional model under ``class_label``). Yields (figure, Markdown table)."""
        pipe = self.studio.store.get(model)
        x, note = read_upload(image, pipe)
        labels = read_labels(pipe, class_label, 1.0, one_of_each=False).request()
        self._check_work(pipe, model, 1, 2 * sum(ERROR_STEPS))
        pace, errors = Pace(progress, 2 * sum(ERROR_STEPS)), {}
        for K in ERROR_STEPS:
            _, options = self._pipe(model, K)
            for z in self._encode(pipe, x, options, pace, f"{K} steps: encoding", labels):
                if isinstance(z, str):
                    yield gr.skip(), z
            for recon in self._decode(pipe, z, options, pace, f"{K} steps: decoding", labels):
                if isinstance(recon, str):
                    yield gr.skip(), recon
            errors[K] = latents.mse_per_dimension(x.cpu(), recon)
        paper = latents.PAPER_TABLE2
        table = "| steps | MSE per dimension | DDIM paper, CIFAR-10 |\n|---:|---:|---:|\n" + "\n".join(
            f"| {k} | {e:.2e} | {paper[k]:.1e} |" for k, e in errors.items()
        )
        if note:
            table += f"\n\nThe input was read as follows: {note}."
        yield media.error_figure(errors), table

    # -- Consistency -------------------------------------------------------------------------------

    @on_compute_thread
    @shows_refusals(line=1, outputs=2)
    def consistency(
        self, model: str, seed: Any, num_images: Any, counts: Sequence[Any], class_label: str | None = None,
        guidance_scale: float | None = None, progress: gr.Progress = gr.Progress()
    ) -> Iterator[tuple]:
        """One x_T (the seed's) decoded with DDIM at each step count: a row per count (a class-conditional
        model's ``class_label`` at ``guidance_scale``). Yields (grid, info)."""
        start = time.perf_counter()
        pipe = self.studio.store.get(model)
        n = check_count(num_images, "The number of images", 1, 8)
        seed = check_count(seed, "The seed", 0, MAX_SEED)
        if not counts:
            raise refused("Pick at least one step count.")
        T = pipe.schedule.num_train_timesteps
        plans = [self._pipe(model, check_count(k, "Steps", 1, T))[1] for k in sorted({int(k) for k in counts})]
        total = sum(o.num_inference_steps for o in plans)
        chosen = read_labels(pipe, class_label, guidance_scale, one_of_each=False)
        self._check_work(pipe, model, n, total, chosen.passes)
        noise, pace, rows = pipe.initial_noise(n, seed), Pace(progress, total), []
        for options in plans:
            K = options.num_inference_steps
            for images in self._decode(pipe, noise, options, pace, f"{K} steps", chosen.request()):
                if isinstance(images, str):
                    yield gr.skip(), images
            rows.append(images)
        folder = self.studio.outputs.new()
        grid = torch.cat(rows)
        stem = f"{media.slug(self.studio.store.name(model))}_consistency_seed{seed}"
        save_grid(grid, folder / f"{stem}_grid.png", nrow=n)
        shown = media.save_png(media.picture(grid, DISPLAY_PX // 2 * max(1, n // 4), nrow=n), folder / f"{stem}.png")
        counts_text = ", ".join(str(o.num_inference_steps) for o in plans)
        info = (
            f"One x_T per column (seed {seed}), decoded with DDIM (eta 0) at **{counts_text} steps**, one row "
            f"each, top to bottom{chosen.words(pipe)} · {time.perf_counter() - start:.1f} s"
        )
        yield shown, info
