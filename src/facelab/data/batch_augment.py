"""Augmentation of a whole batch at once: per-image random parameters drawn as torchvision draws them, applied with
a handful of vectorised tensor operations instead of one chain of small transforms per image.

On a CPU the per-image torchvision.transforms.v2 chain (crop, flip, colour jitter, normalise) costs about 1 ms per
112x112 image, more than decoding the JPEG; here the batch pays it once (see benchmarks/bench_input_pipeline.py).
The steps that can be batched are ``random_resized_crop``, ``hflip``, ``color_jitter`` without hue,
``grayscale`` and ``random_erasing`` (their meaning and options are those of facelab.data.transforms); a recipe with
any other step (blur, randaugment, hue jitter) runs per image with torchvision instead.

Parameters follow torchvision's ``get_params``: RandomResizedCrop's area fraction ``U(scale)`` and log-uniform aspect
``ratio`` with 10 tries and the central-crop fallback, RandomErasing's area and aspect with 10 tries (no erasing when
none fits), ColorJitter's factors ``U(1 - x, 1 + x)`` applied in a random order per image. The arithmetic is that
of ``torchvision.transforms.v2.functional`` (bilinear resize with half-pixel centres, brightness/contrast/saturation
blends with ITU-R 601-2 luma) on floats in [0, 1]; unlike the per-image chain, intermediate results are not rounded
to uint8 between steps. ``tests/test_batch_augment.py`` checks every step against torchvision's functional ops on the
same parameters.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from facelab.config import DataConfig
from facelab.errors import FacelabError

BATCHABLE = ("random_resized_crop", "hflip", "color_jitter", "grayscale", "random_erasing")
#: ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
LUMA = (0.2989, 0.587, 0.114)


def _steps(cfg: DataConfig) -> list[tuple[str, dict[str, Any]]]:
    """(name, options) of the augmentation ``cfg`` asks for (the default three keys as steps)."""
    if not cfg.augment:
        out: list[tuple[str, dict[str, Any]]] = []
        lo, hi = cfg.crop_scale
        if lo < 1.0 or hi < 1.0:
            out.append(("random_resized_crop", {"scale": (lo, hi)}))
        if cfg.hflip:
            out.append(("hflip", {}))
        if cfg.color_jitter > 0:
            j = cfg.color_jitter
            out.append(("color_jitter", {"brightness": j, "contrast": j, "saturation": j}))
        return out
    steps = []
    for entry in cfg.augment:
        if isinstance(entry, str):
            steps.append((entry, {}))
        else:
            steps.append((str(entry["name"]), {k: v for k, v in entry.items() if k != "name"}))
    return steps


def batchable(cfg: DataConfig) -> bool:
    """Whether every augmentation step of ``cfg`` can run on whole batches (no blur, RandAugment or hue jitter)."""
    return all(name in BATCHABLE and not (name == "color_jitter" and opts.get("hue", 0))
               for name, opts in _steps(cfg))


def _pair(v: Any) -> tuple[float, float]:
    return (float(v), float(v)) if isinstance(v, int | float) else (float(v[0]), float(v[1]))


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def _luma(x: torch.Tensor) -> torch.Tensor:
    r, gr, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * gr + LUMA[2] * b).unsqueeze(1)


class BatchAugment:
    """``cfg``'s augmentation and normalisation for a uint8 batch (B, 3, S, S) -> float32 (B, 3, S, S).

    Raises:
        FacelabError: a step that cannot be batched (check :func:`batchable` first).
    """

    def __init__(self, cfg: DataConfig) -> None:
        self.steps = _steps(cfg)
        bad = [n for n, o in self.steps if n not in BATCHABLE or (n == "color_jitter" and o.get("hue", 0))]
        if bad:
            raise FacelabError(f"augmentation step {bad[0]} cannot run on whole batches")
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)

    # -- parameters (torchvision's get_params, vectorised) -------------------------------------------------------
    @staticmethod
    def crop_params(n: int, h: int, w: int, scale: Any = (0.85, 1.0), ratio: Any = (0.9, 1.1),
                    g: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
        """(n, 4) integer boxes (top, left, height, width) as ``RandomResizedCrop.get_params`` draws them."""
        lo, hi = _pair(scale)
        r0, r1 = _pair(ratio)
        area = h * w
        target = area * (torch.rand(n, tries, generator=g, dtype=torch.float64) * (hi - lo) + lo)
        log_r = torch.rand(n, tries, generator=g, dtype=torch.float64) * (math.log(r1) - math.log(r0)) + math.log(r0)
        aspect = torch.exp(log_r)
        cw = torch.round(torch.sqrt(target * aspect))
        ch = torch.round(torch.sqrt(target / aspect))
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = torch.where(ok.any(1), ok.double().argmax(1), torch.full((n,), -1, dtype=torch.long))
        # central-crop fallback: the whole image clamped to the ratio range
        in_ratio = w / h
        if in_ratio < r0:
            fw, fh = w, round(w / r0)
        elif in_ratio > r1:
            fh, fw = h, round(h * r1)
        else:
            fw, fh = w, h
        idx = first.clamp(min=0)
        bw = torch.where(first >= 0, cw.gather(1, idx[:, None])[:, 0], torch.full((n,), float(fw), dtype=torch.float64))
        bh = torch.where(first >= 0, ch.gather(1, idx[:, None])[:, 0], torch.full((n,), float(fh), dtype=torch.float64))
        top = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (h - bh + 1))
        left = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (w - bw + 1))
        top = torch.where(first >= 0, top, torch.full((n,), float((h - fh) // 2), dtype=torch.float64))
        left = torch.where(first >= 0, left, torch.full((n,), float((w - fw) // 2), dtype=torch.float64))
        return torch.stack([top, left, bh, bw], 1).long()

    @staticmethod
    def erase_params(n: int, h: int, w: int, scale: Any = (0.02, 0.2), ratio: Any = (0.3, 3.3),
                     g: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
        """(n, 4) boxes (top, left, height, width) as ``RandomErasing.get_params`` draws them; height 0 = none
        fitted in ``tries`` (the image is left as it is)."""
        lo, hi = _pair(scale)
        r0, r1 = _pair(ratio)
        target = h * w * (torch.rand(n, tries, generator=g, dtype=torch.float64) * (hi - lo) + lo)
        aspect = torch.exp(torch.rand(n, tries, generator=g, dtype=torch.float64) * (math.log(r1) - math.log(r0))
                           + math.log(r0))
        eh = torch.round(torch.sqrt(target * aspect))
        ew = torch.round(torch.sqrt(target / aspect))
        ok = (eh < h) & (ew < w)
        first = ok.double().argmax(1)
        found = ok.any(1)
        bh = torch.where(found, eh.gather(1, first[:, None])[:, 0], torch.zeros(n, dtype=torch.float64))
        bw = torch.where(found, ew.gather(1, first[:, None])[:, 0], torch.zeros(n, dtype=torch.float64))
        top = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (h - bh + 1))
        left = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * (w - bw + 1))
        return torch.stack([top, left, bh, bw], 1).long()

    def sample(self, n: int, h: int, w: int, g: torch.Generator | None = None) -> list[dict[str, torch.Tensor]]:
        """Every step's parameters for ``n`` images of ``h`` x ``w`` (one dict per step, in order)."""
        params: list[dict[str, torch.Tensor]] = []
        for name, o in self.steps:
            if name == "random_resized_crop":
                params.append({"box": self.crop_params(n, h, w, o.get("scale", (0.85, 1.0)),
                                                       o.get("ratio", (0.9, 1.1)), g)})
            elif name == "hflip":
                params.append({"on": torch.rand(n, generator=g) < float(o.get("p", 0.5))})
            elif name == "color_jitter":
                factors = torch.stack([_uniform(n, max(0.0, 1 - float(o.get(k, 0.2))), 1 + float(o.get(k, 0.2)), g)
                                       for k in ("brightness", "contrast", "saturation")], 1)
                order = torch.argsort(torch.rand(n, 3, generator=g), 1)  # a random permutation per image
                on = torch.rand(n, generator=g) < float(o.get("p", 1.0))
                params.append({"factors": factors, "order": order, "on": on})
            elif name == "grayscale":
                params.append({"on": torch.rand(n, generator=g) < float(o.get("p", 0.1))})
            elif name == "random_erasing":
                on = torch.rand(n, generator=g) < float(o.get("p", 0.25))
                params.append({"on": on, "box": self.erase_params(n, h, w, o.get("scale", (0.02, 0.2)),
                                                                  o.get("ratio", (0.3, 3.3)), g)})
        return params

    # -- application ---------------------------------------------------------------------------------------------
    @staticmethod
    def resized_crop(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """Crop ``box`` (top, left, height, width) of each image and resize it back to the input size, mirrored
        where ``flip`` -- one ``grid_sample`` for the batch. The sampling is ``F.interpolate(bilinear,
        align_corners=False)``'s on the cropped image: output pixel ``o`` reads input ``left + (o + 0.5) w / S -
        0.5``, clamped to the crop (its edge pixels repeat)."""
        n, _, h, w = x.shape
        top, left, bh, bw = box.double().unbind(1)

        def axis(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
            o = torch.arange(size, dtype=torch.float64).view(1, -1) + 0.5
            pix = start.view(-1, 1) + o * (length.view(-1, 1) / size) - 0.5
            pix = torch.minimum(torch.maximum(pix, start.view(-1, 1)), (start + length - 1).view(-1, 1))
            return (2 * pix + 1) / size - 1  # grid_sample's normalised coordinate (align_corners=False)

        gx, gy = axis(left, bw, w), axis(top, bh, h)
        if flip is not None:
            gx = torch.where(flip.view(-1, 1), gx.flip(1), gx)
        grid = torch.stack([gx.view(n, 1, w).expand(n, h, w), gy.view(n, h, 1).expand(n, h, w)], dim=-1)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)

    @staticmethod
    def resized_crop_uint8(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """:meth:`resized_crop` for a uint8 batch, one image at a time with ``F.interpolate``'s uint8 bilinear
        kernel (what torchvision's resize runs on uint8 tensors): about twice as fast on a CPU as ``grid_sample``
        on floats."""
        h, w = x.shape[2], x.shape[3]
        out = torch.empty_like(x)
        for i, (top, left, bh, bw) in enumerate(box.tolist()):
            out[i] = F.interpolate(x[i:i + 1, :, top:top + bh, left:left + bw], size=(h, w), mode="bilinear",
                                   align_corners=False, antialias=bh > h or bw > w)[0]
        return out

    @staticmethod
    def flip(x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        """Mirror the images where ``on`` (in place)."""
        idx = torch.nonzero(on).flatten()
        if len(idx):
            x[idx] = x[idx].flip(-1)
        return x

    @staticmethod
    def jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, on: torch.Tensor,
               inplace: bool = False) -> torch.Tensor:
        """Brightness, contrast and saturation blends (torchvision's adjust_* on floats, clamped to [0, 1] after
        each) in each image's own ``order``, on the images where ``on``. In place on a copy of each image, one image
        at a time: its 150 KB stay in the CPU cache for all three blends (a whole-batch pass per blend is memory
        bound and ~5x slower on one core)."""
        out = x if inplace else x.clone()
        luma = torch.tensor(LUMA, dtype=x.dtype).view(3, 1, 1)
        fs, orders = factors.tolist(), order.tolist()
        for i in torch.nonzero(on).flatten().tolist():
            im = out[i]
            for k in orders[i]:
                f = fs[i][k]
                if k == 0:
                    im.mul_(f)
                elif k == 1:
                    mean = float((im * luma).sum(0).mean())
                    im.mul_(f).add_((1 - f) * mean)
                else:
                    grey = (im * luma).sum(0)
                    im.mul_(f).add_(grey.mul_(1 - f))
                im.clamp_(0, 1)
        return out

    def apply(self, x: torch.Tensor, params: list[dict[str, torch.Tensor]], start: int = 0) -> torch.Tensor:
        """The steps from ``start`` on with ``params`` on a float batch in [0, 1] (B, 3, S, S), before
        normalisation (``x`` is modified)."""
        h, w = x.shape[2], x.shape[3]
        for (name, o), p in list(zip(self.steps, params, strict=True))[start:]:
            if name == "random_resized_crop":
                x = self.resized_crop(x, p["box"])
            elif name == "hflip":
                x = self.flip(x, p["on"])
            elif name == "color_jitter":
                x = self.jitter(x, p["factors"], p["order"], p["on"], inplace=True)
            elif name == "grayscale":
                x = torch.where(p["on"].view(-1, 1, 1, 1), _luma(x).expand(-1, 3, -1, -1), x)
            elif name == "random_erasing":
                top, left, bh, bw = (v.view(-1, 1, 1, 1) for v in p["box"].unbind(1))
                rows = torch.arange(h).view(1, 1, h, 1)
                cols = torch.arange(w).view(1, 1, 1, w)
                mask = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
                mask &= p["on"].view(-1, 1, 1, 1)
                x = torch.where(mask, torch.full_like(x, float(o.get("value", 0)) / 255.0), x)
        return x

    def __call__(self, batch: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> augmented, normalised float32 (B, 3, S, S). Leading crop and flip steps run on the
        uint8 images (a quarter of the bytes), the rest on floats."""
        params = self.sample(batch.shape[0], batch.shape[2], batch.shape[3], g)
        x, start = batch, 0
        while start < len(self.steps) and self.steps[start][0] in ("random_resized_crop", "hflip"):
            p = params[start]
            x = self.resized_crop_uint8(x, p["box"]) if "box" in p else self.flip(x.clone() if x is batch else x,
                                                                                     p["on"])
            start += 1
        x = self.apply(x.float().div_(255.0), params, start)
        return x.sub_(self.mean).div_(self.std)


class BatchCollate:
    """``collate_fn`` for a DataLoader over a dataset of (uint8 image, label[, ...]) items: stacks the images and
    augments them as one batch (in the loader's worker process when there are workers)."""

    def __init__(self, augment: BatchAugment) -> None:
        self.augment = augment

    def __call__(self, items: list[tuple[Any, ...]]) -> list[Any]:
        from torch.utils.data import default_collate

        images = self.augment(torch.stack([it[0] for it in items]))
        rest = default_collate([it[1:] for it in items])
        return [images, *rest]
