"""Write an illumination-only face folder in the manner of Extended Yale B from a folder of evenly lit faces.

    .venv/bin/python benchmarks/yaleb_like.py ../shared/data/att_faces /tmp/orl_yaleb --identities 38 --lights 6

Extended Yale B (Georghiades, Belhumeur, Kriegman, PAMI 2001; Lee, Ho, Kriegman, PAMI 2005) photographs 38 people
in one frontal pose under 64 point-light directions (azimuth -130..+130 degrees, elevation -40..+90 degrees), in
grey, many of them mostly in shadow. We do not have it; this script makes a stand-in so that fine-tuning can be
tuned on a folder where the pretrained model is weak. Each source photo is relit ``--lights`` times by a
Lambertian model on a generic face shape placed by the detector's five landmarks (an ellipsoid head, a nose ridge,
eye sockets), with attached and cast shadows (ray-marched over the height map), a low ambient term, camera gamma
and sensor noise. The albedo is the source photo (roughly evenly lit). Light directions are drawn from the Yale B
ranges, seeded by file name, so the folder is reproducible.

Writes DST/<identity>/<photo>_<k>.png (grey, the source size) and DST_lights.json beside DST (azimuth and
elevation per file).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from facelab.faces.pipeline import AlignOptions, find_faces
from facelab.images import list_images, read_image
from facelab.utils.io import write_json


def face_height(h: int, w: int, lm: np.ndarray | None) -> np.ndarray:
    """Height map (pixels, towards the camera) of a generic face placed by 5 landmarks (eyes, nose, mouth corners);
    without landmarks the face is assumed centred."""
    if lm is None:
        eyes = np.array([[0.35 * w, 0.42 * h], [0.65 * w, 0.42 * h]])
        nose = np.array([0.5 * w, 0.58 * h])
        mouth = np.array([[0.38 * w, 0.72 * h], [0.62 * w, 0.72 * h]])
    else:
        eyes, nose, mouth = lm[:2], lm[2], lm[3:5]
    iod = float(np.linalg.norm(eyes[1] - eyes[0]))
    cx = float((eyes[:, 0].mean() + mouth[:, 0].mean()) / 2)
    cy = float((eyes[:, 1].mean() + mouth[:, 1].mean()) / 2)
    a, b = 1.05 * iod, 1.45 * iod  # half-width, half-height of the head ellipse
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r2 = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2
    z = 0.9 * a * np.sqrt(np.clip(1 - r2, 0, None))
    # nose: a ridge from between the eyes to the tip, highest at the tip
    top = eyes.mean(0)
    t = np.clip(((xx - top[0]) * (nose[0] - top[0]) + (yy - top[1]) * (nose[1] - top[1]))
                / max(1e-6, float(np.sum((nose - top) ** 2))), 0, 1.1)
    px, py = top[0] + t * (nose[0] - top[0]), top[1] + t * (nose[1] - top[1])
    d2 = (xx - px) ** 2 + (yy - py) ** 2
    ramp = np.clip(t / 0.15, 0, 1)  # fades in below the brow, no step
    z += 0.35 * iod * (0.3 + 0.7 * np.minimum(t, 1.0)) * ramp * np.exp(-d2 / (2 * (0.16 * iod) ** 2))
    for e in eyes:  # eye sockets
        z -= 0.12 * iod * np.exp(-((xx - e[0]) ** 2 + (yy - e[1] + 0.05 * iod) ** 2) / (2 * (0.22 * iod) ** 2))
    z -= 0.05 * iod * np.exp(-((xx - mouth[:, 0].mean()) ** 2 + (yy - mouth[:, 1].mean()) ** 2)
                             / (2 * (0.3 * iod) ** 2))  # mouth region slightly recessed
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(z, 0.08 * iod)  # soft skin, no creases at the head's outline


def render(albedo: np.ndarray, z: np.ndarray, azimuth: float, elevation: float, ambient: float) -> np.ndarray:
    """Lambertian image (0..1) of ``albedo`` (0..1, HxW) on height map ``z`` lit from (azimuth, elevation) degrees:
    azimuth positive = light from the subject's left (image right), elevation positive = from above."""
    az, el = np.radians(azimuth), np.radians(elevation)
    light = np.array([np.sin(az) * np.cos(el), -np.sin(el), np.cos(az) * np.cos(el)])  # x right, y down, z to camera
    gy, gx = np.gradient(z)
    n = np.stack([-gx, -gy, np.ones_like(z)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    shade = np.clip(n @ light, 0, None)
    # cast shadows: march from each pixel towards the light over the height map
    h, w = z.shape
    horiz = np.hypot(light[0], light[1])
    if horiz > 1e-3 and light[2] < 0.999:
        step = np.array([light[0], light[1]]) / horiz
        rise = light[2] / horiz  # height gained per pixel travelled
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        lit = np.ones_like(z, dtype=bool)
        for s in range(1, int(max(h, w))):
            x = xx + s * step[0]
            y = yy + s * step[1]
            inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
            if not inside.any():
                break
            zs = z[np.clip(y.round().astype(int), 0, h - 1), np.clip(x.round().astype(int), 0, w - 1)]
            lit &= ~(inside & (zs > z + s * rise + 0.5))
        shade = shade * lit
    if light[2] < 0:  # light behind the subject: only grazing light on the face edges
        shade = shade * 0.5
    return np.clip(albedo * (ambient + (1 - ambient) * shade), 0, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--identities", type=int, default=38)
    p.add_argument("--lights", type=int, default=6, help="relit copies of each source photo")
    args = p.parse_args()
    src, dst = Path(args.src), Path(args.dst)
    idents = sorted((p for p in src.iterdir() if p.is_dir()), key=lambda p: p.name)[: args.identities]
    opts = AlignOptions()
    log: dict[str, list[float]] = {}
    for ident in idents:
        for f in list_images(ident).images:
            rgb = np.asarray(read_image(ident / f).convert("RGB"))
            dets = find_faces(rgb, "yunet", opts)
            lm = dets[0].landmarks.astype(np.float64) if dets else None
            grey = rgb.astype(np.float64).mean(-1) / 255
            albedo = np.clip(grey / max(1e-3, float(np.percentile(grey, 99))), 0, 1)
            z = face_height(*grey.shape, lm)
            seed = int(hashlib.sha1(f"{ident.name}/{Path(f).name}".encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(seed)
            for k in range(args.lights):
                az = float(rng.uniform(-130, 130))
                el = float(rng.uniform(-40, 90) if rng.random() < 0.5 else rng.uniform(-20, 45))
                img = render(albedo, z, az, el, float(rng.uniform(0.02, 0.12)))
                img = img ** float(rng.uniform(0.8, 1.25))
                img = img + rng.normal(0, 0.012, img.shape)
                out = dst / ident.name / f"{Path(f).stem}_{k}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(out)
                log[f"{ident.name}/{out.name}"] = [az, el]
    write_json(dst.parent / f"{dst.name}_lights.json", log)
    print(f"{len(log)} images of {len(idents)} identities -> {dst}")


if __name__ == "__main__":
    main()
