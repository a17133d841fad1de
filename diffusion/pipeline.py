"""A model ready to sample: the UNet, its noise schedule and the sampling defaults of its scheduler config."""

from __future__ import annotations

import dataclasses
import operator
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from tqdm import tqdm

from . import compiled, hub
from .classes import CLASSES_FILE, ClassInfo, guided
from .files import CheckpointError
from .images import to_unit
from .latents import check_images, check_inversion_options, check_noise, ddim_invert
from .samplers import BaseOptions, Step, get_sampler
from .schedule import NoiseSchedule, parse_scheduler_config
from .unet import UNet, build_unet

if TYPE_CHECKING:
    from .trajectory import Trajectory

@dataclass
class DiffusionPipeline:
    """Sample a UNet with any registered sampler; ``scheduler_config`` is a diffusers scheduler config."""

    unet: UNet
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where it was loaded from, for messages and model cards
    classes: ClassInfo | None = None  # a class-conditional model's classes.json (diffusion.classes)

    def __post_init__(self) -> None:
        ucfg = self.unet.config
        if self.classes is None and ucfg.class_embed_type is None and ucfg.num_class_embeds is not None:
            self.classes = ClassInfo.numbered(ucfg.num_class_embeds)
        self.config = parse_scheduler_config(self.scheduler_config)
        c = self.config
        self.schedule = NoiseSchedule.from_config(
            c["beta_schedule"], c["num_train_timesteps"], c["beta_start"], c["beta_end"], c["trained_betas"]
        )
        self.compiled: Any = None  # a diffusion.compiled.CompiledUNet once compile() found or built one

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def to(self, device: str | torch.device) -> "DiffusionPipeline":
        """Move to ``device``, with convolution weights in channels-last layout: on the CPU, oneDNN runs
        the UNet about 1.15x (batch 16) to 1.3x (batch 1) faster so, with the same numbers to 1e-5."""
        self.unet.to(device, memory_format=torch.channels_last)
        return self

    def sampler_options(self, sampler: str, **overrides: Any) -> BaseOptions:
        """The sampler's options: its diffusers scheduler's defaults, then the keys this checkpoint's
        scheduler config sets (prediction type, clipping, spacing, variance...), then ``overrides``.
        A config key the sampler's diffusers counterpart would honour and it cannot (``use_karras_sigmas``
        for Euler...) raises ValueError instead of sampling something else.

        As diffusers' ``Scheduler.from_config``: a key the config leaves out (or lists in
        ``_use_default_values``) keeps the sampler's own default, e.g. DPM-Solver++'s "linspace"
        spacing, and keys the sampler does not take (``clip_sample`` for Euler) are ignored."""
        spec = get_sampler(sampler)
        names = {f.name for f in dataclasses.fields(spec.options)}
        given = set(self.scheduler_config) - set(self.scheduler_config.get("_use_default_values", []))
        spec.check_config({k: self.scheduler_config[k] for k in given})
        from_config = {k: self.config[k] for k in given if k in names}
        options = spec.make_options(**{**from_config, **{k: v for k, v in overrides.items() if v is not None}})
        # Check the steps against this model's T now, not at the first step of a sampling loop.
        spec.timesteps(self.schedule, options)
        return options

    def initial_noise(self, n: int, seed: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T ~ N(0, I) drawn as diffusers' pipelines draw it: on a CPU generator seeded with ``seed``."""
        n = _count(n, "The number of images")
        generator = generator or torch.Generator("cpu").manual_seed(seed)
        return torch.randn((n, *self.image_shape), generator=generator).to(self.device, self.unet.dtype)

    @property
    def class_conditional(self) -> bool:
        return self.unet.config.class_conditional

    def class_labels(self, value: Any, n: int) -> torch.Tensor | None:
        """``n`` labels from one label or ``n`` of them (indices, or names from ``classes.json``); None for
        an unconditional model. ValueError when a conditional model gets none or an unconditional one some."""
        if not self.class_conditional:
            if value is not None:
                raise ValueError("This model is unconditional: it takes no class label; leave the class out.")
            return None
        if value is None:
            listing = f" ({self.classes.listing()})" if self.classes else ""
            raise ValueError(f"This model is class-conditional: give a class label for the images{listing}.")
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or self.classes is None):
            labels = value.to(self.device)  # mixed classes, "timestep" numbers, "identity" vectors: the UNet checks
        else:
            items = value.tolist() if isinstance(value, torch.Tensor) else value
            labels = torch.tensor(self.classes.labels(items) if self.classes else items, device=self.device)
        if len(labels) == 1:
            labels = labels.expand(n, *labels.shape[1:])
        if len(labels) != n:
            raise ValueError(f"Got {len(labels)} class labels for {n} images; give one label, or one per image.")
        return labels

    def guidance(self, guidance_scale: float | None) -> float:
        """``guidance_scale``, or the model's recommended one (``classes.json``), or 1 (no guidance)."""
        if guidance_scale is None:
            return self.classes.guidance_scale if self.classes else 1.0
        if not self.class_conditional and guidance_scale != 1:
            raise ValueError("Guidance needs a class-conditional model; this one is unconditional.")
        return float(guidance_scale)

    def model_fn(self, class_labels: torch.Tensor | None = None, guidance_scale: float = 1.0) -> Any:
        """(x_t, t) -> UNet output, without gradients; t may be fractional (Euler and Heun evaluate
        between the trained timesteps, as diffusers' UNet2DModel allows). With ``class_labels`` (one per
        image, :meth:`class_labels`), the classifier-free-guided output (:func:`diffusion.classes.guided`).
        One sampling run: the weights count as constants while it is used (:meth:`UNet.frozen_weights`:
        on the CPU the convolution weights are reordered for oneDNN once per run, not at every step);
        after :meth:`compile`, through the compiled package where it applies."""
        unet, packed = self.unet, {}
        net = self.compiled if self.compiled is not None and self.compiled.unet is unet else unet

        def call(x: torch.Tensor, t: float, labels: torch.Tensor | None = None) -> torch.Tensor:
            with torch.no_grad(), unet.frozen_weights(packed):
                t = torch.tensor(t, device=x.device)
                return net(x, t) if labels is None else unet(x, t, labels)

        if class_labels is None:
            return call
        null = self.classes.null_label if self.classes else None
        # One batched call of 2n images on a GPU; on the CPU two calls of n, where a batch of 2n can cost more than
        # twice a batch of n (benchmarks/guidance_cost.py measures both ways).
        return guided(call, class_labels, null, guidance_scale, batched=self.device.type != "cpu")

    def compile(self, build: bool = False, cache_dir: str | Path | None = None) -> bool:
        """Sample through the UNet's ahead-of-time compiled package (:mod:`diffusion.compiled`) from
        now on, if it exists (``build``: compile it first when missing, about a minute on 2 CPU cores).
        Returns whether a package is in use; without one (or off the CPU) sampling stays eager."""
        self.compiled = None
        if self.device.type == "cpu" and self.unet.dtype == torch.float32 and not self.class_conditional:
            self.compiled = compiled.load(self.unet, cache_dir, build_missing=build)
        return self.compiled is not None

    def denoise(
        self,
        sampler: str = "ddim",
        n: int = 1,
        seed: int = 0,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        options: BaseOptions | None = None,
        class_labels: Any = None,
        guidance_scale: float | None = None,
        **overrides: Any,
    ) -> Iterator[Step]:
        """Yield every step of ``sampler`` from the seed's x_T (or ``noise``): the one sampling loop
        that the CLI, the studio, evaluation and training's sample grids all drive. ``options``:
        from :meth:`sampler_options` (else built from ``overrides``). The same generator draws x_T and
        the per-step noise, so results equal diffusers' pipelines for the same seed. A class-conditional
        model takes ``class_labels`` (one, or one per image) and ``guidance_scale`` (None: the model's
        recommended one; 0 the unconditional model, 1 the conditional one, above 1 guided)."""
        opts = options or self.sampler_options(sampler, **overrides)
        generator = generator or torch.Generator("cpu").manual_seed(seed)
        if noise is None:
            x = self.initial_noise(n, seed, generator)
        else:
            check_noise(noise, self.image_shape)
            x = noise.to(self.device, self.unet.dtype)
        model = self.model_fn(self.class_labels(class_labels, len(x)), self.guidance(guidance_scale))
        self.unet.eval()
        yield from _finite(get_sampler(sampler).fn(model, x, self.schedule, opts, generator), opts)

    def sample(
        self,
        sampler: str = "ddim",
        n: int = 1,
        seed: int = 0,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        options: BaseOptions | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        trajectory: Trajectory | None = None,
        class_labels: Any = None,
        guidance_scale: float | None = None,
        **overrides: Any,
    ) -> torch.Tensor:
        """Images in [0, 1], shape (n, C, H, W): the last step of :meth:`denoise`, ``batch_size`` images
        at a time (x_T of all images is drawn first, then each batch's steps draw from the same generator,
        so one batch equals diffusers' pipeline). ``progress``: a tqdm bar over all steps; ``trajectory``
        observes the first batch's steps. ``class_labels``, ``guidance_scale``: as :meth:`denoise`."""
        opts = options or self.sampler_options(sampler, **overrides)
        generator = generator or torch.Generator("cpu").manual_seed(seed)
        if noise is not None:
            check_noise(noise, self.image_shape)
        x = self.initial_noise(n, seed, generator) if noise is None else noise
        labels = self.class_labels(class_labels, len(x))
        scale = self.guidance(guidance_scale)
        batch = len(x) if batch_size is None else _count(batch_size, "The batch size")
        finals = []
        with tqdm(
            total=opts.num_inference_steps * -(-len(x) // batch), desc=sampler, unit="step", disable=not progress
        ) as bar:
            for b in range(0, len(x), batch):
                step = None
                for step in self.denoise(sampler, noise=x[b : b + batch], generator=generator, options=opts,
                                         class_labels=None if labels is None else labels[b : b + batch],
                                         guidance_scale=scale):
                    if trajectory is not None and b == 0:
                        trajectory.observe(step)
                    bar.update(1)
                if step is None:
                    raise ValueError(f"{sampler} produced no steps.")
                if trajectory is not None and b == 0:
                    trajectory.finish(step.x_prev)
                finals.append(to_unit(step.x_prev))
        return torch.cat(finals)

    def inversion_options(self, options: BaseOptions | None = None, **overrides: Any) -> BaseOptions:
        """DDIM options for encoding (:meth:`sampler_options` of "ddim", then the deprecated
        ``set_alpha_to_zero`` config key as diffusers' ``DDIMInverseScheduler`` reads it); ValueError for
        what inversion cannot honour (eta > 0, linspace or quad spacing)."""
        if options is None:
            if self.scheduler_config.get("set_alpha_to_zero") is not None and overrides.get("set_alpha_to_one") is None:
                overrides["set_alpha_to_one"] = self.scheduler_config["set_alpha_to_zero"]
            options = self.sampler_options("ddim", **overrides)
        check_inversion_options(options)
        return options

    def invert_steps(
        self,
        images: torch.Tensor,
        num_inference_steps: int | None = None,
        *,
        options: BaseOptions | None = None,
        class_labels: Any = None,
        guidance_scale: float | None = 1.0,
        **overrides: Any,
    ) -> Iterator[Step]:
        """Yield every step of encoding ``images`` ([0, 1], (n, C, H, W) as :meth:`sample` returns them)
        into their DDIM latents x_T (Song et al. 2021, Sec. 4.3): :func:`diffusion.latents.ddim_invert`,
        as diffusers' ``DDIMInverseScheduler`` loop with this scheduler config. The last ``x_prev`` is x_T.
        A class-conditional model encodes under ``class_labels`` (the conditional model, ``guidance_scale`` 1,
        unless given: decode with the same label and scale to reconstruct)."""
        opts = self.inversion_options(options, num_inference_steps=num_inference_steps, **overrides)
        check_images(images, self.image_shape)
        model = self.model_fn(self.class_labels(class_labels, len(images)), self.guidance(guidance_scale))
        self.unet.eval()
        x = images.to(self.device, self.unet.dtype) * 2 - 1
        yield from _finite(ddim_invert(model, x, self.schedule, opts), opts)

    def invert(
        self,
        images: torch.Tensor,
        num_inference_steps: int | None = None,
        *,
        options: BaseOptions | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        class_labels: Any = None,
        guidance_scale: float | None = 1.0,
        **overrides: Any,
    ) -> torch.Tensor:
        """The DDIM latents x_T of ``images`` (eta 0; the last step of :meth:`invert_steps`), ``batch_size``
        images at a time. Decoding them with :meth:`sample` (``noise=``, the same options) reconstructs
        the images (Table 2)."""
        opts = self.inversion_options(options, num_inference_steps=num_inference_steps, **overrides)
        check_images(images, self.image_shape)
        labels = self.class_labels(class_labels, len(images))
        batch = len(images) if batch_size is None else _count(batch_size, "The batch size")
        latents = []
        with tqdm(total=opts.num_inference_steps * -(-len(images) // batch), desc="invert", unit="step",
                  disable=not progress) as bar:
            for b in range(0, len(images), batch):
                step = None
                for step in self.invert_steps(images[b : b + batch], options=opts, guidance_scale=guidance_scale,
                                              class_labels=None if labels is None else labels[b : b + batch]):
                    bar.update(1)
                assert step is not None  # at least one step: options checked
                latents.append(step.x_prev)
        return torch.cat(latents)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        revision: str | None = None,
        *,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        device: str | torch.device = "cpu",
    ) -> "DiffusionPipeline":
        """Load a pipeline from a local folder or a Hub repo id (``owner/name``), diffusers format, either
        layout (:func:`diffusion.hub.load_checkpoint`). Hub files are fetched with ``huggingface_hub`` (its
        cache, ``revision`` pinning; offline when ``local_files_only`` or ``HF_HUB_OFFLINE=1``).
        Raises :class:`diffusion.CheckpointError` with the reason."""
        checkpoint = hub.load_checkpoint(source, revision, cache_dir=cache_dir, local_files_only=local_files_only)
        return cls.from_checkpoint(checkpoint, device)

    @classmethod
    def from_checkpoint(cls, checkpoint: hub.Checkpoint, device: str | torch.device = "cpu") -> "DiffusionPipeline":
        """Build a pipeline from a checkpoint already read (:func:`diffusion.hub.load_checkpoint`): the
        tensor work of loading, without the file or network work. Raises :class:`diffusion.CheckpointError`."""
        kind = checkpoint.unet_config.get("_class_name", "UNet2DModel")
        if kind != "UNet2DModel":
            raise CheckpointError(
                f"{checkpoint.source} holds a {kind}; only pixel-space DDPM models (UNet2DModel) are supported."
            )
        try:
            unet = build_unet(checkpoint.unet_config, checkpoint.state_dict)
            classes = None
            if checkpoint.classes is not None:
                classes = ClassInfo.from_dict(checkpoint.classes, unet.config.num_class_embeds)
            pipe = cls(unet, checkpoint.scheduler_config, checkpoint.source, classes)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"Cannot load {checkpoint.source}: {e}") from None
        return pipe.to(device)

    def save_pretrained(self, directory: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write the diffusers pipeline layout (loads with :meth:`from_pretrained` and diffusers'
        ``DDPMPipeline.from_pretrained``): ``model_index.json``, ``unet/config.json``,
        ``unet/diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``, then
        ``extra_files`` (name -> text). Every file is written atomically."""
        given = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
        if self.classes is not None:
            extra_files = {CLASSES_FILE: self.classes.to_json(), **(extra_files or {})}
        return hub.write_folder(
            directory, self.unet.config.to_dict(), self.unet.state_dict(), {**self.config, **given}, extra_files
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload DDPM pipeline",
        extra_files: dict[str, str] | None = None,
    ) -> str:
        """Create the Hub repo ``repo_id`` if needed and upload :meth:`save_pretrained`'s folder;
        returns the commit URL."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, extra_files)
            return hub.upload_folder(repo_id, tmp, private=private, token=token, commit_message=commit_message)


def _count(value: Any, what: str) -> int:
    """``value`` as a count of at least 1 (Python or NumPy integers); ValueError naming ``what`` otherwise."""
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be a whole number, got {value!r}.") from None
    if isinstance(value, bool) or count < 1:
        raise ValueError(f"{what} must be at least 1, got {value!r}.")
    return count


def _finite(steps: Iterator[Step], options: BaseOptions) -> Iterator[Step]:
    """``steps``, stopped with a ValueError naming the step where the sample turns NaN or infinite (a
    damaged or diverged model): nothing downstream gets a black image without a word."""
    for step in steps:
        if not torch.isfinite(step.x_prev).all():
            raise ValueError(
                f"The sample turned NaN or infinite at step {step.index + 1} of {options.num_inference_steps} "
                f"(t = {step.t}): the model's output is not finite there; its weights may be damaged or diverged."
            )
        yield step


def load(
    source: str | Path,
    revision: str | None = None,
    *,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    device: str | torch.device = "cpu",
) -> DiffusionPipeline:
    """``diffusion.load``: the short form of :meth:`DiffusionPipeline.from_pretrained`."""
    return DiffusionPipeline.from_pretrained(
        source, revision, cache_dir=cache_dir, local_files_only=local_files_only, device=device
    )

