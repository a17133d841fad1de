"""Checkpoint I/O in diffusers' format: load from a folder or the Hugging Face Hub, save, push.

Layouts read: ``unet/`` + ``scheduler/`` subfolders (diffusers pipelines) or flat (``config.json`` +
``scheduler_config.json`` at the root, as in ``google/ddpm-cifar10-32``). Weights: ``.safetensors``
first; a ``.bin`` is opened only with ``torch.load(weights_only=True)``, so no code is unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .pipeline import DiffusionPipeline
from .unet import UNet, UNetConfig, load_state_dict_strict

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LAYOUTS = ("unet", "")  # subfolder first, then the root
DIFFUSERS_VERSION = "0.42.1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason and what to do."""


def atomic_write(path: Path, write: Callable[[Path], None], keep_suffix: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file.
    ``keep_suffix`` ends the temporary name with the path's suffix, for writers that pick the format from it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + (path.suffix if keep_suffix else ""), dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged, download or export it again.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object.")
    return data


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a ``.bin`` pickle holding only tensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"Cannot read {path}: {e}. The file is damaged or incomplete; download or export it again.") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"Refusing to load {path}: it holds Python objects other than tensors, and unpickling them could run code "
            f"({first}). Convert it to .safetensors with a trusted tool."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"Cannot read {path}: {e}. The file is damaged or not a PyTorch state dict.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return dict(state)


def build_pipeline(unet_config: dict[str, Any], weights: dict[str, torch.Tensor], scheduler_config: dict[str, Any], source: str) -> DiffusionPipeline:
    cls = unet_config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise CheckpointError(f"{source} holds a {cls}; only pixel-space DDPM models (UNet2DModel) are supported.")
    try:
        unet = UNet(UNetConfig.from_dict(unet_config))
        load_state_dict_strict(unet, weights)
        return DiffusionPipeline(unet.eval(), scheduler_config, source)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Cannot load {source}: {e}") from None


def _load_folder(root: Path) -> DiffusionPipeline:
    for sub in LAYOUTS:
        config = root / sub / "config.json"
        if config.is_file():
            break
    else:
        raise CheckpointError(f"No config.json in {root} or {root / 'unet'}: this is not a diffusers model folder.")
    folder = config.parent
    weights = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"No weights next to {config}: expected {' or '.join(WEIGHTS)}.")
    sched = next((p for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json") if p.is_file()), None)
    scheduler_config = read_json(sched) if sched else {}
    return build_pipeline(read_json(config), read_weights(weights), scheduler_config, str(root))


def _download_first(repo_id: str, candidates: list[str], kw: dict[str, Any]) -> str | None:
    """The local path of the first candidate file the repo has, or None if it has none.

    When the Hub cannot be reached, ``kw`` switches to ``local_files_only`` so that the remaining
    files come from the cache at once instead of each waiting through huggingface_hub's retries."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    misses = 0
    for name in candidates:
        try:
            return hf_hub_download(repo_id, name, **kw)
        except LocalEntryNotFoundError:
            if not kw["local_files_only"]:  # unreachable: every later look-up is a cache look-up
                kw["local_files_only"] = True
                try:
                    return hf_hub_download(repo_id, name, **kw)
                except LocalEntryNotFoundError:
                    pass
            misses += 1
        except EntryNotFoundError:  # the Hub answered: no such file
            continue
    if misses == len(candidates):
        raise LocalEntryNotFoundError(", ".join(candidates))
    return None


def _load_hub(repo_id: str, revision: str | None, cache_dir: str | None, local_files_only: bool) -> DiffusionPipeline:
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    try:
        config = _download_first(repo_id, ["unet/config.json", "config.json"], kw)
        if config is None:
            raise CheckpointError(f"The Hub repo {repo_id!r} has no unet/config.json or config.json: it is not a diffusers UNet model.")
        sub = "unet/" if config.replace(os.sep, "/").endswith("unet/config.json") else ""
        weights = _download_first(repo_id, [sub + w for w in WEIGHTS], kw)
        if weights is None:
            raise CheckpointError(f"The Hub repo {repo_id!r} has {sub}config.json but no {sub}{WEIGHTS[0]} or {sub}{WEIGHTS[1]}.")
        try:
            sched = _download_first(repo_id, ["scheduler/scheduler_config.json", "scheduler_config.json"], kw)
        except LocalEntryNotFoundError:
            sched = None
    except GatedRepoError:
        raise CheckpointError(f"The Hub repo {repo_id!r} is gated: accept its terms on the Hub and log in with `hf auth login`.") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"No Hub repo named {repo_id!r} (or it is private: log in with `hf auth login`). Check the spelling, e.g. 'google/ddpm-cifar10-32'.") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"The Hub repo {repo_id!r} has no revision {revision!r}.") from None
    except HFValidationError as e:
        raise CheckpointError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id ({e}).") from None
    except LocalEntryNotFoundError:
        why = ("offline mode is on (HF_HUB_OFFLINE=1 or local_files_only)" if constants.HF_HUB_OFFLINE or local_files_only
               else "the Hugging Face Hub could not be reached")
        raise CheckpointError(
            f"Cannot load {repo_id!r}: {why} and the repo is not in the local cache ({cache_dir or constants.HF_HUB_CACHE}). "
            "Connect to the internet once to download it, or pass a local model folder."
        ) from None
    return build_pipeline(read_json(Path(config)), read_weights(Path(weights)), read_json(Path(sched)) if sched else {}, repo_id)


def load(source: str | Path, revision: str | None = None, *, cache_dir: str | None = None,
         local_files_only: bool = False, device: str | torch.device = "cpu") -> DiffusionPipeline:
    """Load a pipeline from a local folder or a Hub repo id (``owner/name``), diffusers format.

    Hub files are fetched with ``huggingface_hub`` (its cache, ``revision`` pinning; offline when
    ``local_files_only`` or ``HF_HUB_OFFLINE=1``). Raises :class:`CheckpointError` with the reason.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        pipe = _load_folder(path)
    elif path.exists():
        raise CheckpointError(f"{source} is a file; pass the model folder that holds config.json.")
    elif str(source).startswith((".", "/", "~")) or os.sep in str(source).strip("/").replace("/", "", 1):
        raise CheckpointError(f"No model folder at {source}.")
    else:
        pipe = _load_hub(str(source), revision, cache_dir, local_files_only)
    return pipe.to(device)


def model_index() -> dict[str, Any]:
    return {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}


def save_pretrained(pipe: DiffusionPipeline, directory: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write the diffusers pipeline layout (loads with :func:`load` and ``DDPMPipeline.from_pretrained``):
    ``model_index.json``, ``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors``,
    ``scheduler/scheduler_config.json``. Every file is written atomically."""
    out = Path(directory)
    unet_config = {**pipe.unet.config.to_dict(), "_diffusers_version": DIFFUSERS_VERSION}
    sched = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **pipe.config, **{k: v for k, v in pipe.scheduler_config.items() if not k.startswith("_")}}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in pipe.unet.state_dict().items()}
    atomic_write(out / "unet" / WEIGHTS[0], lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_json(out / "unet" / "config.json", unet_config)
    write_json(out / "scheduler" / "scheduler_config.json", sched)
    write_json(out / "model_index.json", model_index())
    for name, text in (extra_files or {}).items():
        atomic_write(out / name, lambda p, text=text: p.write_text(text))
    return out


def push_to_hub(pipe: DiffusionPipeline, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Upload DDPM pipeline", extra_files: dict[str, str] | None = None) -> str:
    """Create ``repo_id`` if needed and upload :func:`save_pretrained`'s folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(pipe, tmp, extra_files)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(info)
