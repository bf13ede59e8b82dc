"""Pretrained models: LFW pairs.txt 10-fold accuracy with 5-point alignment, and embedding throughput of facelab's
converted model beside the same weights run by onnxruntime directly, timed side by side in one run.

    .venv/bin/python benchmarks/bench_pretrained.py lfw --pairs ../shared/data/lfw_deepfunneled/pairs.txt \\
        --data ../shared/data/lfw_deepfunneled --model sface --threads 2 --out bench/pretrained
    .venv/bin/python benchmarks/bench_pretrained.py speed --model sface --threads 1 --batch 32 --seconds 30

``lfw``: every image of the pair list is detected and aligned once (``facelab.faces.pipeline.prepare_faces``: YuNet and
the 5-point ArcFace template, as every facelab command does), the crops cached in --work, then
embedded by the facelab model with flip TTA; cosine scores go through facelab's k-fold protocol (threshold chosen
on the other folds). Writes pairs.json / pairs.md / ROC, DET and histogram PNGs into --out, plus the threshold at
FAR=1e-3 (the registry's reference threshold comes from here).

``lfw-1n``: the reference 1:N (open-set identification) threshold of a pretrained model. A gallery of --gallery
LFW identities with >= 4 images (seeded choice), each enrolled with its first 3 images; mated searches: up to 3 more
images of each; non-mated searches (strangers): one image of each of --strangers other identities. The threshold is
the lowest with FPIR <= --target-fpir on all searches (facelab's ``calibrate_open_set``), and the FPIR it gives on
strangers it was not chosen on is measured by 2-fold cross-validation over the strangers. Writes
--out/lfw_1n_<model>.json; the registry's ``identification_threshold`` comes from here.

``speed``: facelab's model (torch, eval, inference_mode) and onnxruntime on the cleaned ONNX graph (same fp32
weights, the same number of intra-op threads) embed the same batches of real aligned faces in alternation; the
median images/s of each and their ratio are written to --out/speed_*.json. Neither side spin-waits: onnxruntime's
threads are told not to spin and torch's OpenMP threads run with OMP_WAIT_POLICY=PASSIVE (set before torch is
imported; ``--omp-active`` keeps OpenMP's default spinning, which on a loaded 2-core machine costs torch a third).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede importing torch

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from facelab.errors import FacelabError
from facelab.evaluation.pairs import read_pairs, score_pairs
from facelab.evaluation.report import write_verification_report
from facelab.faces.base import NoFaceFound
from facelab.faces.pipeline import prepare_faces
from facelab.images import read_image
from facelab.inference.spec import InputSpec
from facelab.pretrained import load
from facelab.utils.io import atomic_open, write_json


def same_sources(keys: np.ndarray, sources: list) -> bool:
    """Whether a crop cache's ``keys`` name ``sources`` (paths compared resolved: ../shared and /work/shared agree)."""
    return [str(Path(k).resolve()) for k in keys.tolist()] == [str(Path(s).resolve()) for s in sources]


def aligned_crops(sources: list, spec: InputSpec, cache: Path) -> tuple[np.ndarray, dict[str, int]]:
    """(N, S, S, 3) uint8 RGB crops of ``sources`` (cached in ``cache``) and the count of each crop method."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if same_sources(z["keys"], sources):
                return z["crops"], json.loads(str(z["methods"]))
    crops = np.zeros((len(sources), spec.input_size, spec.input_size, 3), np.uint8)
    methods: dict[str, int] = {}
    for i, src in enumerate(tqdm(sources, desc="detect + align", unit="img")):
        image = read_image(src)
        try:
            face = prepare_faces(image, spec)[0]
            method = face.method
            crop = face.image
        except NoFaceFound:  # fall back to the central region of the photo, and count it
            w, h = image.size
            side = int(min(w, h) * 0.6)
            crop = image.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
            method = "no face: centre crop"
        methods[method] = methods.get(method, 0) + 1
        crops[i] = np.asarray(crop.convert("RGB").resize((spec.input_size, spec.input_size)))
    with atomic_open(cache, "wb") as fh:
        np.savez(fh, keys=np.array([str(s) for s in sources]), crops=crops, methods=json.dumps(methods))
    return crops, methods


def to_input(crops: np.ndarray, spec: InputSpec) -> torch.Tensor:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.flip(1) if spec.colour_order == "BGR" else x


@torch.inference_mode()
def embed(module: torch.nn.Module, crops: np.ndarray, spec: InputSpec, batch: int, flip: bool) -> np.ndarray:
    out = []
    for i in tqdm(range(0, len(crops), batch), desc="embed", unit="batch"):
        x = to_input(crops[i:i + batch], spec)
        e = module(x)
        if flip:
            e = (e + module(x.flip(3))) / 2
        out.append(e.float().numpy())
    return np.concatenate(out)


def cmd_lfw(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    pipeline = "facelab.faces (YuNet, 5-point ArcFace template)"
    pm = load(args.model, accept_licence=args.accept_licence)
    pairs = read_pairs(args.pairs, args.data)
    work = Path(args.work)
    crops, methods = aligned_crops(pairs.images, pm.spec, work / f"lfw_crops_{pm.spec.input_size}.npz")
    t0 = time.perf_counter()
    emb = embed(pm.module, crops, pm.spec, args.batch, not args.no_flip)
    seconds = time.perf_counter() - t0
    results = score_pairs(emb, pairs, ("cosine",))
    report = results["cosine"]["report"]
    far3 = next(op for op in report["tar_at_far"] if op["far_target"] == 1e-3)
    meta = {"name": f"LFW {Path(args.pairs).name}, {pm.name}", "model": pm.name, "alignment": pipeline,
            "crop_methods": methods, "flip_tta": not args.no_flip, "images": len(pairs.images),
            "pairs_total": len(pairs), "threads": args.threads, "embed_seconds": round(seconds, 1),
            "threshold_far_1e-3": far3["threshold"], "tar_far_1e-3": far3["tar"]}
    doc = write_verification_report(args.out, meta, results)
    kf = doc["scorers"]["cosine"]["kfold"]
    print(f"{pm.name}: LFW 10-fold accuracy {100 * kf['accuracy_mean']:.2f} +- {100 * kf['accuracy_std']:.2f} "
          f"(AUC {report['roc_auc']:.4f}, TAR {far3['tar']:.4f} at FAR 1e-3, threshold {far3['threshold']:.4f}); "
          f"alignment: {pipeline}; crops: {methods}; reports in {args.out}")


def cmd_lfw_1n(args: argparse.Namespace) -> None:
    from facelab.evaluation.calibration import calibrate_open_set
    from facelab.evaluation.identification import fnir, folder_items, held_out_fpir, search
    from facelab.inference.model import load_model

    torch.set_num_threads(args.threads)
    fm = load_model(args.model, accept_licence=args.accept_licence)
    paths, labels = folder_items(args.data)
    by_id: dict[str, list[Path]] = {}
    for path, name in zip(paths, labels, strict=True):
        by_id.setdefault(name, []).append(path)
    rng = np.random.default_rng(args.seed)
    rich = sorted(n for n, ps in by_id.items() if len(ps) >= 4)
    enrolled = sorted(rng.choice(rich, size=min(args.gallery, len(rich)), replace=False).tolist())
    others = sorted(set(by_id) - set(enrolled))
    strangers = sorted(rng.choice(others, size=min(args.strangers, len(others)), replace=False).tolist())
    g_paths = [p for n in enrolled for p in by_id[n][:3]]
    g_labels = [n for n in enrolled for _ in by_id[n][:3]]
    q_paths = [p for n in enrolled for p in by_id[n][3:6]] + [by_id[n][0] for n in strangers]
    q_labels = [n for n in enrolled for _ in by_id[n][3:6]] + [f"stranger:{n}" for n in strangers]
    emb = fm.embedder(progress=True, cache=True).embed_all(g_paths + q_paths, desc="embed gallery + searches")
    s = search(emb[len(g_paths):], q_labels, emb[:len(g_paths)], g_labels, "cosine")
    cal = calibrate_open_set(s, "fpir", args.target_fpir)
    thr = cal["threshold"]
    held = held_out_fpir(s, strangers, args.target_fpir)  # 2-fold over the stranger identities
    doc = {"model": args.model, "data": str(args.data), "seed": args.seed, "gallery_identities": len(enrolled),
           "gallery_images": len(g_paths), "mated_searches": int(s.mated.sum()),
           "non_mated_searches": int((~s.mated).sum()), "target_fpir": args.target_fpir, "threshold": thr,
           "fpir": cal["achieved"]["fpir"], "fnir_rank1": fnir(s, thr), "dir_rank1": 1 - fnir(s, thr),
           "held_out_fpir_2fold": held, "flip_tta": fm.spec.flip_tta, "align": fm.spec.align}
    write_json(Path(args.out) / f"lfw_1n_{args.model}.json", doc)
    print(f"{args.model}: 1:N threshold {thr:.4f} at FPIR {args.target_fpir:g} (gallery {len(enrolled)} LFW identities "
          f"x 3 images, {doc['mated_searches']} mated / {doc['non_mated_searches']} stranger searches); "
          f"DIR {doc['dir_rank1']:.3f}; FPIR on held-out strangers (2-fold) {doc['held_out_fpir_2fold']:.4f}")


def cmd_speed(args: argparse.Namespace) -> None:
    from facelab.pretrained.onnxfile import clean_model, load_onnx, locate, ort_session
    from facelab.pretrained.registry import get_entry

    torch.set_num_threads(args.threads)
    pm = load(args.model, accept_licence=args.accept_licence)
    entry = get_entry(args.model)
    graph = clean_model(load_onnx(locate(entry.source.package, entry.source.path, entry.source.install)))
    session = ort_session(graph, threads=args.threads)
    name = session.get_inputs()[0].name
    crops_file = Path(args.work) / f"lfw_crops_{pm.spec.input_size}.npz"
    if crops_file.is_file():
        with np.load(crops_file, allow_pickle=False) as z:
            crops = z["crops"][: args.batch * 8]
        source = "aligned LFW faces"
    else:
        crops = (np.random.default_rng(0).random((args.batch * 8, 112, 112, 3)) * 255).astype(np.uint8)
        source = "random pixels (run `lfw` first for real faces)"
    x = to_input(crops, pm.spec)
    # what the ONNX file takes: SFace wants raw RGB 0..255, w600k (x - 127.5) / 127.5, i.e. facelab's input
    x_onnx = (torch.from_numpy(crops).permute(0, 3, 1, 2).float()).numpy() if entry.name == "sface" else x.numpy()
    batches = [(x[i:i + args.batch], x_onnx[i:i + args.batch]) for i in range(0, len(x), args.batch)]
    module = pm.module.eval()
    times: dict[str, list[float]] = {"facelab": [], "onnxruntime": []}
    with torch.inference_mode():
        for xt, xo in batches[:2]:  # warm-up
            module(xt)
            session.run(None, {name: xo})
        deadline = time.perf_counter() + args.seconds
        i = 0
        while time.perf_counter() < deadline or len(times["facelab"]) < 5:
            xt, xo = batches[i % len(batches)]
            t0 = time.perf_counter()
            ours = module(xt)
            t1 = time.perf_counter()
            theirs = session.run(None, {name: xo})[0]
            t2 = time.perf_counter()
            times["facelab"].append(t1 - t0)
            times["onnxruntime"].append(t2 - t1)
            i += 1
    diff = float(np.abs(ours.numpy() - theirs).max())
    rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
    doc = {"model": pm.name, "threads": args.threads, "batch": args.batch, "batches_each": len(times["facelab"]),
           "inputs": source, "images_per_s": rate, "ratio_facelab_over_ort": rate["facelab"] / rate["onnxruntime"],
           "max_abs_diff_last_batch": diff, "torch": torch.__version__,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (active)"),
           "onnxruntime": __import__("onnxruntime").__version__}
    policy = "active" if args.omp_active else "passive"
    write_json(Path(args.out) / f"speed_{pm.name}_t{args.threads}_b{args.batch}_{policy}.json", doc)
    print(f"{pm.name}, {args.threads} thread(s), batch {args.batch}, OpenMP {policy}, {source}: facelab "
          f"{rate['facelab']:.1f} img/s, "
          f"onnxruntime {rate['onnxruntime']:.1f} img/s, ratio {doc['ratio_facelab_over_ort']:.2f} "
          f"(max abs diff {diff:.2e})")


def main() -> None:
    from facelab.utils.allocator import tune_allocator

    tune_allocator("batch")  # what every facelab command but serve does (facelab.utils.allocator)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("lfw", "lfw-1n", "speed"):
        s = sub.add_parser(name)
        s.add_argument("--model", default="sface")
        s.add_argument("--accept-licence", action="store_true")
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--batch", type=int, default=32)
        s.add_argument("--out", default="bench/pretrained")
        s.add_argument("--work", default="/tmp/facelab_bench_pretrained", help="cache of aligned crops")
        if name == "lfw":
            s.add_argument("--pairs", required=True)
            s.add_argument("--data")
            s.add_argument("--no-flip", action="store_true")
        elif name == "lfw-1n":
            s.add_argument("--data", required=True, help="LFW folder (identity folders)")
            s.add_argument("--gallery", type=int, default=100, help="enrolled identities")
            s.add_argument("--strangers", type=int, default=2000, help="identities searched but not enrolled")
            s.add_argument("--target-fpir", type=float, default=0.01)
            s.add_argument("--seed", type=int, default=0)
        else:
            s.add_argument("--seconds", type=float, default=30.0)
            s.add_argument("--omp-active", action="store_true", help="leave torch's OpenMP spin-waiting on")
    args = p.parse_args()
    try:
        {"lfw": cmd_lfw, "lfw-1n": cmd_lfw_1n, "speed": cmd_speed}[args.cmd](args)
    except FacelabError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
