"""What the studio's buttons do: generators that yield output tuples and raise ``gr.Error`` with what to
change. Usable without a server (the tests drive them directly)."""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
import torch

import diffusion
from diffusion import images as dimages
from diffusion.classes import CLASSES_FILE
from diffusion.samplers import SAMPLERS
from diffusion.trajectory import Trajectory

from . import media
from .class_controls import read_labels
from .compute import on_compute_thread
from .errors import refused, shows_refusals
from .models import ModelStore
from .options import check_count, evaluations, make_options, planned_timesteps, split_options, starts_too_late
from .runs import Pace, Run, compare_metrics, difference, metrics_markdown, running_note
from .settings import (
    APP_DIR,
    BUNDLED_MODELS,
    DISPLAY_PX,
    DOWNLOAD_TILE_PX,
    HUB_PRESETS,
    MAX_IMAGES,
    MAX_SEED,
    PREVIEW_PX,
    Settings,
)

NO_RUN = "Run **Generate** on the Sample tab first."


class Studio:
    """The app's handlers over a :class:`ModelStore` and the bounded :class:`media.OutputFolders`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.store = ModelStore(self.settings)
        self.outputs = media.OutputFolders(self.settings.keep_outputs)
        # the folder of each shown trajectory's frame pictures, for as long as a session holds the trajectory
        self._frame_folders: weakref.WeakKeyDictionary[Trajectory, Path] = weakref.WeakKeyDictionary()

    @property
    def default_model(self) -> str:
        return self.store.default

    def model_choices(self) -> list[tuple[str, str]]:
        """The default model first, the other bundled ones present (offline), then the Hub presets."""
        def label(path: str) -> str:
            name = Path(path).name or path
            kind = "bundled, class-conditional" if (APP_DIR / path / CLASSES_FILE).is_file() else "bundled"
            return f"{name} ({kind})" if path in BUNDLED_MODELS else name

        bundled = [p for p in BUNDLED_MODELS if p != self.default_model and (APP_DIR / p).is_dir()]
        presets = [p for p in HUB_PRESETS if p != self.default_model]
        return [(label(self.default_model), self.default_model)] + [(label(p), p) for p in bundled + presets]

    def device(self, pipe: diffusion.DiffusionPipeline) -> str:
        kind = pipe.device.type
        return f"{kind} ({torch.get_num_threads()} threads)" if kind == "cpu" else kind

    def fetch(self, model: str) -> None:
        """Load ``model`` (downloading it if needed): the UI runs this in its own queue before sampling,
        so a slow or failing download does not hold the sampling queue."""
        self.store.get(model)

    def _prepare(self, model: str, seed: Any, num_images: Any) -> tuple[diffusion.DiffusionPipeline, int, int]:
        n = check_count(num_images, "The number of images", 1, MAX_IMAGES)
        seed = check_count(seed, "The seed", 0, MAX_SEED)
        return self.store.get(model), n, seed

    # -- Sample ------------------------------------------------------------------------------------

    @on_compute_thread
    @shows_refusals(line=2, outputs=4, keep=(3,))
    def sample(
        self,
        model: str,
        sampler: str,
        seed: float,
        num_images: float,
        class_label: str | None = None,
        guidance_scale: float | None = None,
        progress: gr.Progress = gr.Progress(),
        **options: Any,
    ) -> Iterator[tuple]:
        """Sample images, streaming predicted-x0 previews. Yields (picture, PNG grid file, info, trajectory);
        the last yield holds the results. Options: any sampler option (``steps``, ``eta``...). A
        class-conditional model takes ``class_label`` (an index, a name, or "all": a row of ``num_images``
        per class from the same x_T) and ``guidance_scale``; an unconditional one ignores both. The time in
        the result line is the request's, from here to the result written."""
        start = time.perf_counter()
        pipe, n, seed = self._prepare(model, seed, num_images)
        opts = make_options(pipe, sampler, split_options(options))
        labels = read_labels(pipe, class_label, guidance_scale)
        name = self.store.name(model)
        rows = len(labels.rows) if labels.rows else 1
        if n * rows > MAX_IMAGES:
            raise refused(f"One of each class is {rows} rows of {n} images, {n * rows} in all, above {MAX_IMAGES}; "
                          f"use at most {MAX_IMAGES // rows} images per class.")
        self.store.check_work(pipe, n * rows, evaluations(pipe, sampler, opts), name, labels.passes)
        run = Run(pipe, sampler, opts, n, seed, record=True, model_name=name, labels=labels)
        folder = self.outputs.new()
        pace = Pace(progress, run.total, self.settings.preview_every_s)
        progress(0, desc=f"{sampler.upper()}: starting")
        yield gr.skip(), gr.skip(), running_note(sampler.upper(), 0, run.total, "starting"), gr.skip()
        shown_at = 0
        for beat in pace.beats(run, run.total, sampler.upper()):
            pic = gr.skip()
            if beat.preview:
                pic = media.save_png(media.picture(diffusion.to_unit(beat.step.pred_x0), PREVIEW_PX),
                                     folder / f"preview{beat.done:04d}.png")
                shown_at = beat.done
            # a tick without a preview still says the step count: a cancel point (Stop takes effect at a yield)
            yield pic, gr.skip(), running_note(sampler.upper(), beat.done, run.total,
                                               f"preview: predicted x0 at step {shown_at}"), gr.skip()
        assert run.images is not None
        stem = f"{media.slug(name)}_{sampler}_{run.done}steps_seed{seed}"
        if labels.rows is not None:
            stem += f"_class-{'all' if rows > 1 else labels.rows[0]}_s{labels.scale:g}"
        factor = max(1, -(-DOWNLOAD_TILE_PX // run.images.shape[-1]))  # 28 px images: 4x, each pixel a 4x4 block
        grid_path = folder / f"{stem}_x{factor}.png"
        nrow = n if rows > 1 else None  # a row per class
        grid = dimages.save_grid(dimages.upscale(run.images, DOWNLOAD_TILE_PX), grid_path, nrow)
        shown = media.save_png(media.picture(run.images, DISPLAY_PX, nrow), folder / f"{stem}_shown.png")
        seconds = time.perf_counter() - start
        compiled = " · compiled" if pipe.compiled is not None and pipe.compiled.covers(n) else ""
        count = n * rows
        info = (
            f"**{count} image{'s' if count != 1 else ''}**{labels.words(pipe)} · {sampler.upper()} · "
            f"{run.done} steps · "
            f"{run.evaluations} model evaluations · {seconds:.2f} s ({1000 * seconds / run.done:.0f} ms/step) · "
            f"seed {seed} · {self.device(pipe)}{compiled} · download: {factor}× nearest-neighbour, "
            f"{grid.shape[-1]}×{grid.shape[-2]} px"
        )
        if note := starts_too_late(pipe, sampler, opts):
            info += f"  \n**Note:** {note}"
        yield shown, str(grid_path), info, run.trajectory

    # -- Compare -----------------------------------------------------------------------------------

    @on_compute_thread
    @shows_refusals(line=4, outputs=6)
    def compare(
        self, model: str, seed: float, num_images: float, class_label: str | None = None,
        progress: gr.Progress = gr.Progress(), **panels: Any
    ) -> Iterator[tuple]:
        """Two samplers from the same x_T (the seed's). Keyword options are prefixed ``a_`` / ``b_``
        (``a_sampler``, ``a_steps``, ``b_eta``, ``a_guidance_scale``...); a class-conditional model draws
        ``class_label`` in both panels, each at its own guidance scale. Yields (image A, image B, slider
        pair, difference map, metrics Markdown, metrics dict)."""
        samplers = {p: panels.get(f"{p}_sampler") for p in "ab"}
        pipe, n, seed = self._prepare(model, seed, num_images)
        opts = {p: make_options(pipe, samplers[p], split_options(panels, f"{p}_")) for p in "ab"}
        labels = {p: read_labels(pipe, class_label, panels.get(f"{p}_guidance_scale"), one_of_each=False)
                  for p in "ab"}
        self.store.check_work(
            pipe, n, sum(evaluations(pipe, samplers[p], opts[p]) * labels[p].passes for p in "ab"),
            self.store.name(model)
        )
        total_steps = sum(o.num_inference_steps for o in opts.values())
        folder = self.outputs.new()
        runs: dict[str, Run] = {}
        pace = Pace(progress, total_steps, self.settings.preview_every_s)
        for p in "ab":
            runs[p] = run = Run(pipe, samplers[p], opts[p], n, seed, labels=labels[p])
            guided = f", s = {labels[p].scale:g}" if labels[p].rows is not None else ""
            label = f"Panel {p.upper()} ({samplers[p].upper()}{guided})"
            if p == "a":  # the last comparison's pictures go: none of them belongs to this run
                yield None, None, None, None, running_note(label, 0, run.total, "starting"), None
            for beat in pace.beats(run, run.total, label):
                md = running_note(label, beat.done, run.total, f"t = {media.timestep_text(beat.step.t)}")
                a_img = b_img = gr.skip()
                if beat.preview:
                    pic = media.save_png(media.picture(diffusion.to_unit(beat.step.pred_x0), PREVIEW_PX),
                                         folder / f"preview-{p}{beat.done:04d}.png")
                    a_img, b_img = (pic, gr.skip()) if p == "a" else (gr.skip(), pic)
                yield a_img, b_img, gr.skip(), gr.skip(), md, gr.skip()
            if p == "a" and run.images is not None:  # panel A's result stays up while B runs
                pic = media.save_png(media.picture(run.images), folder / "a.png")
                yield pic, gr.skip(), gr.skip(), gr.skip(), f"{label}: done in {run.seconds:.2f} s", gr.skip()
        a, b = runs["a"], runs["b"]
        assert a.images is not None and b.images is not None and a.first_x_t is not None and b.first_x_t is not None
        if not torch.equal(a.first_x_t, b.first_x_t):  # both start from the seed's x_T; guard the promise
            raise gr.Error("Internal error: the two panels did not start from the same x_T.")
        heat, diff = difference(a.images, b.images)
        metrics = compare_metrics(a.stats(), b.stats(), diff, self.device(pipe))
        if labels["a"].rows is not None:
            metrics["class"] = pipe.classes.names[labels["a"].rows[0]]
        pa = media.save_png(media.picture(a.images), folder / "a.png")
        pb = media.save_png(media.picture(b.images), folder / "b.png")
        pd = media.save_png(media.picture(heat), folder / "difference.png")
        late = {p: starts_too_late(pipe, samplers[p], opts[p]) for p in "ab"}
        notes = "".join(f"  \n**Note, panel {p.upper()}:** {note}" for p, note in late.items() if note)
        yield pa, pb, (pa, pb), pd, metrics_markdown(metrics) + notes, metrics

    # -- Denoising ---------------------------------------------------------------------------------

    @on_compute_thread
    def show_trajectory(self, traj: Trajectory | None) -> tuple:
        """After a run: the scrubber at the sample, the schedule plot, GIF / MP4 / ZIP / NPZ."""
        if traj is None or len(traj) == 0:
            return gr.update(maximum=1, value=0), None, None, NO_RUN, gr.skip(), None, None, None
        last = len(traj) - 1
        self._frame_folders.pop(traj, None)
        folder = self._frame_folder(traj)
        xt, x0 = self.frame_files(traj, last)
        meta = traj.meta
        stem = f"{media.slug(str(meta.get('model', 'model')))}_{meta.get('sampler', '')}_{traj.num_steps}steps"
        sampler, model = str(meta.get("sampler", "")), media.slug(str(meta.get("model", "")))
        title = f"{sampler.upper()} · {traj.num_steps} steps · {model}"
        fig = media.schedule_figure(media.schedule_plot_data(traj.schedule, traj.visited), title)
        files = media.trajectory_files(traj, folder, stem)
        mp4 = str(files["mp4"]) if "mp4" in files else None
        return (
            gr.update(maximum=last, value=last),
            xt,
            x0,
            media.readout(traj, last),
            fig,
            str(files["gif"]),
            mp4,
            [str(p) for p in files.values()],
        )

    def _frame_folder(self, traj: Trajectory) -> Path:
        """The folder of a trajectory's pictures (made anew if the bounded temp folder dropped it)."""
        folder = self._frame_folders.get(traj)
        if folder is None or not folder.is_dir():
            folder = self._frame_folders[traj] = self.outputs.new()
        return folder

    def frame_files(self, traj: Trajectory, i: int) -> tuple[str, str]:
        """Frame i's x_t and predicted x0 as PNG files (written once per trajectory and frame)."""
        folder = self._frame_folder(traj)
        paths = (folder / f"frame{i:03d}_xt.png", folder / f"frame{i:03d}_x0.png")
        if not all(p.is_file() for p in paths):
            for pic, path in zip(media.frame_pictures(traj, i), paths):
                media.save_png(pic, path)
        return str(paths[0]), str(paths[1])

    @on_compute_thread
    def show_frame(self, index: float, traj: Trajectory | None) -> tuple:
        if traj is None or len(traj) == 0:
            return None, None, NO_RUN
        i = int(min(max(0, index or 0), len(traj) - 1))
        return (*self.frame_files(traj, i), media.readout(traj, i))

    @staticmethod
    def advance(index: float, playing: bool, traj: Trajectory | None) -> tuple:
        """One tick of the play button: the next frame, stopping at the sample."""
        if traj is None or not playing:
            return gr.skip(), gr.Timer(active=False), gr.update(value="▶ Play"), False
        i = int(index or 0) + 1
        if i >= len(traj) - 1:
            return len(traj) - 1, gr.Timer(active=False), gr.update(value="▶ Play"), False
        return i, gr.skip(), gr.skip(), True

    @staticmethod
    def toggle_play(index: float, playing: bool, traj: Trajectory | None) -> tuple:
        if traj is None or playing:
            return gr.skip(), gr.Timer(active=False), gr.update(value="▶ Play"), False
        start = 0 if int(index or 0) >= len(traj) - 1 else gr.skip()
        return start, gr.Timer(active=True), gr.update(value="Pause"), True

    @on_compute_thread
    def schedule_preview(self, model: str, sampler: str, **options: Any) -> Any:
        """The schedule plot for the current Sample settings, before anything runs."""
        pipe = self.store.peek(model)
        if pipe is None or sampler not in SAMPLERS:
            return gr.skip()
        try:
            opts = make_options(pipe, sampler, split_options(options))
            visited = planned_timesteps(pipe, sampler, opts)
        except gr.Error:
            return gr.skip()
        return media.schedule_figure(
            media.schedule_plot_data(pipe.schedule, visited),
            f"{sampler.upper()} · {opts.num_inference_steps} steps (planned)",
        )
