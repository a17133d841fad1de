"""Class labels of a class-conditional model, and classifier-free guidance (Ho and Salimans 2022).

diffusers' ``UNet2DModel`` takes ``class_labels`` but has no convention for their names or for the label
guidance uses as "no class". This project records both in the model folder's ``classes.json``::

    {"names": ["T-shirt/top", "Trouser", ...], "null_label": 10, "guidance_scale": 3.0}

``names``: one per class index, 0 first. ``null_label``: the label the model was trained with in place of
the class for a share of the images (``--cond_drop_prob``), so that it also learned the unconditional
model; without one only ``guidance_scale=1`` can be sampled. ``guidance_scale``: the recommended default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

CLASSES_FILE = "classes.json"
MAX_GUIDANCE = 20.0

Model = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class ClassInfo:
    """What ``classes.json`` says: the class names, the null label and the recommended guidance scale."""

    names: tuple[str, ...]
    null_label: int | None = None
    guidance_scale: float = 1.0

    @classmethod
    def from_dict(cls, data: Any, num_labels: int | None, where: str = CLASSES_FILE) -> "ClassInfo":
        """Parse ``classes.json``, checked against the UNet's ``num_class_embeds`` (``num_labels``)."""
        if not isinstance(data, dict) or not isinstance(data.get("names"), list) or not data["names"]:
            raise ValueError(f'{where} should hold {{"names": [...], "null_label": ..., "guidance_scale": ...}}.')
        names = tuple(str(n) for n in data["names"])
        null, scale = data.get("null_label"), data.get("guidance_scale", 1.0)
        if null is not None and (isinstance(null, bool) or not isinstance(null, int) or null < 0):
            raise ValueError(f"{where}: null_label must be a label index, got {null!r}.")
        if num_labels is not None and len(names) + (null is not None) > num_labels:
            raise ValueError(
                f"{where} names {len(names)} classes{' and a null label' if null is not None else ''}, "
                f"but the UNet has only {num_labels} label embeddings."
            )
        if null is not None and null < len(names):
            raise ValueError(f"{where}: null_label {null} is also the label of class {names[null]!r}.")
        return cls(names, null, check_guidance(scale))

    @classmethod
    def numbered(cls, num_labels: int) -> "ClassInfo":
        """A conditional model without ``classes.json``: classes named by index, no null label."""
        return cls(tuple(str(i) for i in range(num_labels)))

    def to_json(self) -> str:
        return json.dumps({"names": list(self.names), "null_label": self.null_label,
                           "guidance_scale": self.guidance_scale}, indent=2) + "\n"

    def label(self, value: str | int) -> int:
        """A class index from an index or a name (case and punctuation ignored: "sneaker", "t-shirt")."""
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(self.names):
                raise ValueError(f"class label {index} is out of range; this model has classes 0 to "
                                 f"{len(self.names) - 1} ({self.listing()}).")
            return index
        wanted = _key(text)
        matches = [i for i, n in enumerate(self.names) if _key(n) == wanted]
        matches = matches or [i for i, n in enumerate(self.names) if wanted and _key(n).startswith(wanted)]
        if len(matches) != 1:
            why = "names several classes" if matches else "is not a class of this model"
            raise ValueError(f"{text!r} {why}; give an index or a name: {self.listing()}.")
        return matches[0]

    def labels(self, value: str | int | Sequence[str | int]) -> list[int]:
        """Class indices from an index, a name, ``"all"`` (one of each class) or a list of those."""
        if isinstance(value, str) and value.strip().lower() == "all":
            return list(range(len(self.names)))
        items = [value] if isinstance(value, (str, int)) else list(value)
        if not items:
            raise ValueError(f"No class given; give an index or a name: {self.listing()}.")
        return [self.label(v) for v in items]

    def mix(self, a: int, b: int, weights: torch.Tensor, num_labels: int) -> torch.Tensor:
        """Labels for frames between class ``a`` (weight 0) and ``b`` (weight 1): (len(weights), num_labels)
        weights over the label table, for :meth:`UNet.forward <diffusion.unet.UNet.forward>`."""
        out = torch.zeros(len(weights), num_labels, dtype=torch.float32)
        out[:, a] += 1 - weights.float()
        out[:, b] += weights.float()
        return out

    def listing(self) -> str:
        return ", ".join(f"{i} {n}" for i, n in enumerate(self.names))


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def check_guidance(scale: Any) -> float:
    """The guidance scale as a float in [0, MAX_GUIDANCE]; ValueError saying what it means otherwise."""
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_scale must be a number, got {scale!r}.") from None
    if isinstance(scale, bool) or not math.isfinite(value) or not 0 <= value <= MAX_GUIDANCE:
        raise ValueError(
            f"guidance_scale must be between 0 and {MAX_GUIDANCE:g} (0: the unconditional model, 1: the conditional "
            f"model, above 1: guided), got {scale!r}."
        )
    return value


def passes(scale: float | None) -> int:
    """UNet passes per model evaluation at guidance ``scale`` (None: no labels): 2 under guidance (the class and the
    null label), 1 at s = 0 and s = 1 (:func:`guided` calls the UNet once there) and without labels."""
    return 1 if scale is None or scale in (0.0, 1.0) else 2


def guided(net: Callable[..., torch.Tensor], labels: torch.Tensor, null_label: int | None, scale: float,
           batched: bool = True) -> Model:
    """(x_t, t) -> the guided output eps_null + s (eps_cond - eps_null) (Ho and Salimans 2022, Eq. 6 with
    w = s - 1): the conditional and the null halves in one batched UNet call (``batched``), or in two calls
    of the request's size; one pass at s = 1 (the conditional model) and at s = 0 (the unconditional one).
    ``net(x, t, labels)``: the UNet; ``labels``: indices (B,) or weights over the label table (B, num_class_embeds)."""
    scale = check_guidance(scale)
    if scale != 1 and null_label is None:
        raise ValueError(
            f"guidance_scale {scale:g} needs the model's null label, and this model records none ({CLASSES_FILE}); "
            "sample with guidance_scale=1."
        )
    null = None
    if null_label is not None:  # the null label, as an index or (for mixed classes) as one-hot weights
        null = torch.full_like(labels, null_label) if labels.ndim == 1 else torch.zeros_like(labels)
        if labels.ndim == 2:
            null[:, null_label] = 1

    def model(x: torch.Tensor, t: Any) -> torch.Tensor:
        if scale == 1:
            return net(x, t, labels)
        if scale == 0:
            return net(x, t, null)
        if batched:
            cond, uncond = net(torch.cat([x, x]), t, torch.cat([labels, null])).chunk(2)
        else:
            cond, uncond = net(x, t, labels), net(x, t, null)
        return uncond + scale * (cond - uncond)

    return model
