"""What a model expects of its input, stated once and carried with the model (bundle metadata, run config,
pretrained registry): the side of the square input, the channel order, the normalisation, flip test-time
augmentation and how a raw photo is turned into a face crop (``align``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from facelab.errors import FacelabError

COLOUR_ORDERS = ("RGB", "BGR")
#: ``align`` value for images that are already face crops: resized to the input, no detection
NO_ALIGN = "none"


@dataclass(frozen=True)
class InputSpec:
    """How a decoded RGB image becomes the model's (3, S, S) float input.

    Pixels are scaled to [0, 1], then ``(x - mean) / std`` per channel (in RGB order), then reordered to
    ``colour_order``. Common conventions: (0.5, 0.5) -> [-1, 1] (facelab's and InsightFace's (x - 127.5) / 127.5);
    mean 0 and std 1/255 -> raw 0..255 values (OpenCV's SFace).

    ``align`` is ``"none"`` (inputs are face crops: resized to S x S) or a registered detector name (e.g.
    ``"yunet"``): a photo is detected and its face warped onto the 5-point ArcFace template at S x S.
    """

    input_size: int = 112
    colour_order: str = "RGB"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    flip_tta: bool = True
    align: str = NO_ALIGN
    #: detector/crop options recorded with the model (e.g. the several-faces policy); free-form, validated by faces
    align_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises FacelabError for a value no model could have been trained with."""
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or not 16 <= self.input_size \
                <= 1024:
            raise FacelabError(f"input_size must be an integer in [16, 1024], got {self.input_size!r}")
        if self.colour_order not in COLOUR_ORDERS:
            raise FacelabError(f"colour_order must be one of {', '.join(COLOUR_ORDERS)}, got {self.colour_order!r}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if (not isinstance(values, tuple | list) or len(values) != 3
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                               for v in values)):
                raise FacelabError(f"{key} must be 3 finite numbers, got {values!r}")
        if any(v <= 0 for v in self.std):
            raise FacelabError(f"std must be positive, got {self.std!r}")
        if not isinstance(self.flip_tta, bool):
            raise FacelabError(f"flip_tta must be true or false, got {self.flip_tta!r}")
        if not isinstance(self.align, str) or not self.align:
            raise FacelabError(f"align must be 'none' or a detector name, got {self.align!r}")
        if not isinstance(self.align_options, dict):
            raise FacelabError(f"align_options must be a mapping, got {self.align_options!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "input spec") -> InputSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise FacelabError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        try:
            values = dict(d)
            for key in ("mean", "std"):
                if key in values and isinstance(values[key], list):
                    values[key] = tuple(values[key])
            return cls(**values)
        except FacelabError as exc:
            raise FacelabError(f"{where}: {exc}") from None

    @property
    def aligned(self) -> bool:
        return self.align != NO_ALIGN

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """RGB PIL image (any size) -> normalised (3, S, S) float32 tensor in ``colour_order``."""
        steps: list[Any] = [v2.ToImage(), v2.Resize((self.input_size, self.input_size), antialias=True),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        tf = v2.Compose(steps)
        if self.colour_order == "BGR":
            return lambda im: tf(im).flip(0)
        return tf
