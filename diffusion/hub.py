"""Checkpoint I/O in diffusers' format, on configs and tensors only: read a folder or a Hugging Face Hub repo,
write a folder, upload one. :class:`diffusion.DiffusionPipeline` builds on it (``from_pretrained``,
``save_pretrained``, ``push_to_hub``); this module never imports the pipeline.

Layouts read: ``unet/`` + ``scheduler/`` subfolders (diffusers pipelines) or flat (``config.json`` +
``scheduler_config.json`` at the root, as in ``google/ddpm-cifar10-32``). Weights: ``.safetensors``
first; a ``.bin`` is opened only with ``torch.load(weights_only=True)``, so no code is unpickled.
"""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .classes import CLASSES_FILE
from .files import CheckpointError, _short, atomic_write, check_not_lfs_pointer, read_json, write_json

__all__ = ["Checkpoint", "CheckpointError", "DIFFUSERS_VERSION", "hub_reachable", "load_checkpoint", "model_index",
           "read_folder", "read_hub", "read_weights", "upload_folder", "write_folder"]

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LAYOUTS = ("unet", "")  # subfolder first, then the root
DIFFUSERS_VERSION = "0.42.1"
# Seconds the Hub gets to answer before we go cache-only.
HUB_PROBE_TIMEOUT = float(os.environ.get("HUB_PROBE_TIMEOUT", 3.0))


class Checkpoint(NamedTuple):
    """What a diffusers model folder or Hub repo holds, read but not built into a model."""

    unet_config: dict[str, Any]  # unet/config.json (or the root config.json of the flat layout)
    state_dict: dict[str, torch.Tensor]  # the UNet weights, as stored (diffusers' names, old or new)
    scheduler_config: dict[str, Any]  # scheduler/scheduler_config.json (or the root one); {} if there is none
    source: str  # the folder or the repo id, for messages and model cards
    classes: dict[str, Any] | None = None  # classes.json of a class-conditional model (diffusion.classes)


class HubUnreachable(CheckpointError):
    """A Hub model that is not in the local cache while the Hub cannot be reached (or offline mode is on)."""


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a ``.bin`` pickle holding only tensors."""
    path = Path(path)
    check_not_lfs_pointer(path, "the weights")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"Cannot read {path}: {e}. The file is damaged or incomplete; download or export it again."
            ) from None
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


def read_folder(root: Path) -> Checkpoint:
    """The configs and weights of the diffusers model folder ``root``, either layout."""
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
    sched = next(
        (p for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json") if p.is_file()), None
    )
    scheduler_config = read_json(sched) if sched else {}
    classes = read_json(root / CLASSES_FILE) if (root / CLASSES_FILE).is_file() else None
    return Checkpoint(read_json(config), read_weights(weights), scheduler_config, str(root), classes)


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


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hub endpoint (``HF_ENDPOINT``) answers one HEAD request within ``timeout`` seconds (any
    HTTP status counts). One quick probe instead of huggingface_hub's retries, which take ~25 s to give
    up on an unreachable Hub; run in a thread so that a hanging name look-up cannot exceed the timeout."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    answered: list[bool] = []

    def probe() -> None:
        try:
            get_session().head(constants.ENDPOINT, timeout=timeout)
            answered.append(True)
        except Exception:  # noqa: BLE001 - any failure to get an answer means "unreachable"
            answered.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="hub-probe")
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answered and answered[0])


def read_hub(repo_id: str, revision: str | None = None, cache_dir: str | None = None,
             local_files_only: bool = False) -> Checkpoint:
    """The configs and weights of the Hub repo ``repo_id``, either layout, through huggingface_hub's cache."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Unreachable (no network, a firewall): the cache alone, at once, rather than each file after ~25 s of retries.
    online = not (local_files_only or constants.HF_HUB_OFFLINE) and hub_reachable()
    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=not online)
    shown = _short(repr(repo_id))
    try:
        config = _download_first(repo_id, ["unet/config.json", "config.json"], kw)
        if config is None:
            raise CheckpointError(
                f"The Hub repo {shown} has no unet/config.json or config.json: it is not a diffusers UNet model."
            )
        sub = "unet/" if config.replace(os.sep, "/").endswith("unet/config.json") else ""
        weights = _download_first(repo_id, [sub + w for w in WEIGHTS], kw)
        if weights is None:
            raise CheckpointError(
                f"The Hub repo {shown} has {sub}config.json but no {sub}{WEIGHTS[0]} or {sub}{WEIGHTS[1]}."
            )
        try:
            sched = _download_first(repo_id, ["scheduler/scheduler_config.json", "scheduler_config.json"], kw)
        except LocalEntryNotFoundError:
            sched = None
        try:
            classes = _download_first(repo_id, [CLASSES_FILE], kw)
        except LocalEntryNotFoundError:
            classes = None
    except GatedRepoError:
        raise CheckpointError(
            f"The Hub repo {shown} is gated: accept its terms on the Hub and log in with `hf auth login`."
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"No Hub repo named {shown} (or it is private: log in with `hf auth login`). "
            "Check the spelling, e.g. 'google/ddpm-cifar10-32'."
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"The Hub repo {shown} has no revision {_short(repr(revision))}.") from None
    except HFValidationError as e:
        raise CheckpointError(
            f"{shown} is neither a local folder nor a valid Hub repo id ({_short(str(e), 200)})."
        ) from None
    except LocalEntryNotFoundError:
        why = (
            "offline mode is on (HF_HUB_OFFLINE=1 or local_files_only)"
            if constants.HF_HUB_OFFLINE or local_files_only
            else "the Hugging Face Hub could not be reached"
        )
        raise HubUnreachable(
            f"Cannot load {shown}: {why} and the repo is not in the local cache "
            f"({cache_dir or constants.HF_HUB_CACHE}). "
            "Connect to the internet once to download it, or pass a local model folder."
        ) from None
    return Checkpoint(
        read_json(Path(config)), read_weights(Path(weights)), read_json(Path(sched)) if sched else {}, repo_id,
        read_json(Path(classes)) if classes else None,
    )


def load_checkpoint(source: str | Path, revision: str | None = None, *, cache_dir: str | None = None,
                    local_files_only: bool = False) -> Checkpoint:
    """Read a checkpoint from a local folder or a Hub repo id (``owner/name``), diffusers format.

    Hub files are fetched with ``huggingface_hub`` (its cache, ``revision`` pinning; offline when
    ``local_files_only`` or ``HF_HUB_OFFLINE=1``). Raises :class:`CheckpointError` with the reason.
    """
    text = str(source)
    if not text.strip():
        raise CheckpointError(
            "No model given: pass a model folder (e.g. checkpoints/fashion-mnist) "
            "or a Hub repo id (e.g. google/ddpm-cifar10-32)."
        )
    try:
        path = Path(source).expanduser()
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError) as e:  # a name too long for the filesystem, a NUL byte...
        raise CheckpointError(
            f"{_short(text)} is neither a model folder nor a Hub repo id ({getattr(e, 'strerror', None) or e})."
        ) from None
    if is_dir:
        return read_folder(path)
    if exists:
        raise CheckpointError(f"{_short(text)} is a file; pass the model folder that holds config.json.")
    if text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1):
        raise CheckpointError(f"No model folder at {_short(text)}.")
    return read_hub(text, revision, cache_dir, local_files_only)


def model_index() -> dict[str, Any]:
    return {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}


def write_folder(directory: str | Path, unet_config: dict[str, Any], state_dict: dict[str, torch.Tensor],
                 scheduler_config: dict[str, Any], extra_files: dict[str, str] | None = None) -> Path:
    """Write the diffusers pipeline layout (read by :func:`load_checkpoint` and ``DDPMPipeline.from_pretrained``):
    ``model_index.json``, ``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors`` (float32),
    ``scheduler/scheduler_config.json`` (a ``DDPMScheduler`` unless the config names another class), then
    ``extra_files`` (name -> text). Every file is written atomically."""
    out = Path(directory)
    unet_config = {**unet_config, "_diffusers_version": DIFFUSERS_VERSION}
    sched = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **scheduler_config}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    atomic_write(out / "unet" / WEIGHTS[0], lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_json(out / "unet" / "config.json", unet_config)
    write_json(out / "scheduler" / "scheduler_config.json", sched)
    write_json(out / "model_index.json", model_index())
    for name, text in (extra_files or {}).items():
        atomic_write(out / name, lambda p, text=text: p.write_text(text))
    return out


def upload_folder(repo_id: str, folder: str | Path, *, private: bool = False, token: str | None = None,
                  commit_message: str = "Upload DDPM pipeline") -> str:
    """Create the Hub repo ``repo_id`` if needed and upload ``folder`` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(info)
