"""Checkpoint I/O in diffusers' format: load from a folder or the Hugging Face Hub, save, push.

Layouts read: ``unet/`` + ``scheduler/`` subfolders (diffusers pipelines) or flat (``config.json`` +
``scheduler_config.json`` at the root, as in ``google/ddpm-cifar10-32``). Weights: ``.safetensors``
first; a ``.bin`` is opened only with ``torch.load(weights_only=True)``, so no code is unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import stat
import tempfile
import threading
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
HUB_PROBE_TIMEOUT = float(os.environ.get("HUB_PROBE_TIMEOUT", 3.0))  # seconds the Hub gets to answer before we go cache-only


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason and what to do."""


def atomic_write(path: Path, write: Callable[[Path], None], keep_suffix: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file.
    ``keep_suffix`` ends the temporary name with the path's suffix, for writers that pick the format from it.
    The file gets the mode a plain ``open(path, "w")`` would give: the existing file's, else 0666 less the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    while True:  # mkstemp's unique name, but created with 0666 so that the umask applies (mkstemp forces 0600)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, what: str = "file") -> Path:
    """Raise ValueError, saying what to do, unless :func:`atomic_write` can write the file ``path``
    (``what="file"``) or files into the folder ``path`` (``what="folder"``), folders to create included.
    Tried for real, with a file created and removed in the nearest existing folder, so it holds for root,
    read-only mounts and /proc alike; call it before the work whose result goes there."""
    path = Path(path).expanduser()
    shown = _short(str(path))
    try:
        if what == "file" and path.is_dir():
            raise ValueError(f"{shown} is a folder; give a file name, e.g. {_short(str(path / 'samples.png'))}.")
        if what == "folder" and path.exists() and not path.is_dir():
            raise ValueError(f"{shown} is a file, not a folder; give a folder (it is created if missing).")
        folder = path.parent if what == "file" else path
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise ValueError(f"Cannot write {shown}: {_short(str(existing))} is a file, not a folder.")
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        except OSError as e:
            raise ValueError(f"Cannot write {shown}: no file can be created in {_short(str(existing))} ({e.strerror or e}). "
                             f"Choose a {what} you can write to.") from None
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"Cannot write {shown}: {e.strerror or e}. Choose a {what} you can write to.") from None
    return path


def _short(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters for a message (a 10,000-character argument stays one short line),
    control characters escaped (a NUL or a newline in an argument does not break the line)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 4:]} ({len(text):,} characters)"


LFS_POINTER = b"version https://git-lfs"


def check_not_lfs_pointer(path: Path, what: str = "the file") -> None:
    """Raise CheckpointError if ``path`` is a Git LFS pointer (a clone without ``git lfs``) instead of the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        return  # the reader reports it
    if head == LFS_POINTER:
        raise CheckpointError(f"{path} is a Git LFS pointer, not {what}: fetch the real files with `git lfs pull` in the repository "
                              "it came from (after `git lfs install`).")


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    check_not_lfs_pointer(Path(path))
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged, download or export it again.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object.")
    return data


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a ``.bin`` pickle holding only tensors."""
    path = Path(path)
    check_not_lfs_pointer(path, "the weights")
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


def _load_hub(repo_id: str, revision: str | None, cache_dir: str | None, local_files_only: bool) -> DiffusionPipeline:
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    # Unreachable (no network, a firewall): the cache alone, at once, rather than each file after ~25 s of retries.
    online = not (local_files_only or constants.HF_HUB_OFFLINE) and hub_reachable()
    kw = dict(revision=revision, cache_dir=cache_dir, local_files_only=not online)
    shown = _short(repr(repo_id))
    try:
        config = _download_first(repo_id, ["unet/config.json", "config.json"], kw)
        if config is None:
            raise CheckpointError(f"The Hub repo {shown} has no unet/config.json or config.json: it is not a diffusers UNet model.")
        sub = "unet/" if config.replace(os.sep, "/").endswith("unet/config.json") else ""
        weights = _download_first(repo_id, [sub + w for w in WEIGHTS], kw)
        if weights is None:
            raise CheckpointError(f"The Hub repo {shown} has {sub}config.json but no {sub}{WEIGHTS[0]} or {sub}{WEIGHTS[1]}.")
        try:
            sched = _download_first(repo_id, ["scheduler/scheduler_config.json", "scheduler_config.json"], kw)
        except LocalEntryNotFoundError:
            sched = None
    except GatedRepoError:
        raise CheckpointError(f"The Hub repo {shown} is gated: accept its terms on the Hub and log in with `hf auth login`.") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"No Hub repo named {shown} (or it is private: log in with `hf auth login`). Check the spelling, e.g. 'google/ddpm-cifar10-32'.") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"The Hub repo {shown} has no revision {_short(repr(revision))}.") from None
    except HFValidationError as e:
        raise CheckpointError(f"{shown} is neither a local folder nor a valid Hub repo id ({_short(str(e), 200)}).") from None
    except LocalEntryNotFoundError:
        why = ("offline mode is on (HF_HUB_OFFLINE=1 or local_files_only)" if constants.HF_HUB_OFFLINE or local_files_only
               else "the Hugging Face Hub could not be reached")
        raise CheckpointError(
            f"Cannot load {shown}: {why} and the repo is not in the local cache ({cache_dir or constants.HF_HUB_CACHE}). "
            "Connect to the internet once to download it, or pass a local model folder."
        ) from None
    return build_pipeline(read_json(Path(config)), read_weights(Path(weights)), read_json(Path(sched)) if sched else {}, repo_id)


def load(source: str | Path, revision: str | None = None, *, cache_dir: str | None = None,
         local_files_only: bool = False, device: str | torch.device = "cpu") -> DiffusionPipeline:
    """Load a pipeline from a local folder or a Hub repo id (``owner/name``), diffusers format.

    Hub files are fetched with ``huggingface_hub`` (its cache, ``revision`` pinning; offline when
    ``local_files_only`` or ``HF_HUB_OFFLINE=1``). Raises :class:`CheckpointError` with the reason.
    """
    text = str(source)
    if not text.strip():
        raise CheckpointError("No model given: pass a model folder (e.g. checkpoints/fashion-mnist) or a Hub repo id (e.g. google/ddpm-cifar10-32).")
    try:
        path = Path(source).expanduser()
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError) as e:  # a name too long for the filesystem, a NUL byte...
        raise CheckpointError(f"{_short(text)} is neither a model folder nor a Hub repo id ({getattr(e, 'strerror', None) or e}).") from None
    if is_dir:
        pipe = _load_folder(path)
    elif exists:
        raise CheckpointError(f"{_short(text)} is a file; pass the model folder that holds config.json.")
    elif text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1):
        raise CheckpointError(f"No model folder at {_short(text)}.")
    else:
        pipe = _load_hub(text, revision, cache_dir, local_files_only)
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
