"""CLI: deployment -- ``facelab bundle | export | embed | verify | enroll | identify | gallery | serve``.

Every command takes the same MODEL reference (a run, a checkpoint, a bundle, a pretrained name; see
facelab.inference.model). Only argparse is imported at module level so ``facelab --help`` stays instant.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from facelab.cli.common import Handler, add_model_argument, dumps, open_model
from facelab.errors import FacelabError


def _gallery_arg(p: argparse.ArgumentParser, positional: bool = False) -> None:
    help_ = "gallery database (SQLite file; created on first enroll)"
    if positional:
        p.add_argument("gallery", metavar="GALLERY", help=help_)
    else:
        p.add_argument("--gallery", required=True, metavar="DB", help=help_)


def _index_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", default="exact", help="search index: exact (torch matmul, default) or faiss "
                   "(needs the faiss extra)")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _threshold_args(p: argparse.ArgumentParser, rate: str) -> None:
    task = "1:N identification" if rate == "FPIR" else "1:1 verification"
    p.add_argument("--threshold", type=float, help=f"cosine accept threshold for {task} (default: the model's "
                   "calibrated one)")
    p.add_argument(f"--target-{rate.lower()}", type=float, dest="target", metavar=rate,
                   help=f"use the threshold that gave this {rate} on the model's calibration data instead")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the deployment subcommands on the main parser's subparsers."""
    p = sub.add_parser("bundle", help="package a model (run, checkpoint, pretrained, bundle) as a deployable bundle",
                       description="Write the backbone weights (safetensors) with their architecture, input spec "
                       "(size, colours, normalisation, flip TTA, alignment), embedding size, both accept thresholds "
                       "(1:1 FAR-calibrated and 1:N FPIR-calibrated, with their provenance) and digests into one "
                       "file. A run's thresholds come from RUN/thresholds.json (facelab calibrate / fit), the 1:1 "
                       "one else from the EER threshold of RUN/metrics.json (facelab eval).")
    add_model_argument(p)
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="bundle file to write (.safetensors)")
    p.add_argument("--threshold", type=float, help="1:1 cosine threshold to store instead of the calibrated one")
    p.add_argument("--identification-threshold", type=float, metavar="T",
                   help="1:N cosine threshold to store instead of the calibrated one")
    p.add_argument("--no-flip", action="store_true", help="embed without horizontal-flip test-time augmentation")

    p = sub.add_parser("export", help="export a model to ONNX and/or TorchScript with a parity check",
                       description="Export the embedding graph (backbone, flip TTA, L2 normalisation) and compare "
                       "its output with torch's on random and optional real inputs; the max abs diff is reported "
                       "and an export above --tolerance is removed with an error.")
    add_model_argument(p)
    p.add_argument("--format", default="all", help="onnx, torchscript or all (default)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: beside a model file, else the current one)")
    p.add_argument("--images", nargs="*", default=[], metavar="IMG", help="real images to include in the parity check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted max abs diff (default 1e-4)")

    p = sub.add_parser("embed", help="embed every image under a folder into an .npz file",
                       description="Embed all images under DIR (recursively, chosen by content) and save unit-length "
                       "float32 embeddings, relative paths, identities (first folder level), face boxes and the "
                       "model fingerprint to an .npz. Every file is accounted for: embedded, not an image, unusable "
                       "(listed with the reason) or hidden.")
    p.add_argument("dir", metavar="DIR", help="folder of images (any depth)")
    add_model_argument(p, positional=False)
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="embeddings file to write (.npz)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: 8 on CPU, 64 on a GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("verify", help="same person? two photos, or a photo and an enrolled identity (1:1)",
                       description="Cosine score of the two faces against the model's 1:1 threshold. With "
                       "--identity NAME --gallery DB, the photo's face is compared with NAME's enrolled images "
                       "(the best score counts).")
    p.add_argument("images", nargs="+", metavar="IMG", help="two photos, or one with --identity")
    add_model_argument(p, positional=False)
    p.add_argument("--identity", metavar="NAME", help="verify the photo against this enrolled identity")
    p.add_argument("--gallery", metavar="DB", help="the gallery holding --identity")
    p.add_argument("--scorer", default="cosine", choices=("cosine", "deepface"),
                   help="cosine (default) or deepface: the chi-square + SVM verifier a bundle carries (fit one "
                   "with `facelab verifier`); two photos only")
    _threshold_args(p, "FAR")
    _json_arg(p)

    p = sub.add_parser("enroll", help="add photos of a person to a gallery",
                       description="Embed one face per photo and store them under NAME in one transaction (all or "
                       "nothing: a photo without a face refuses the enrollment). With --folder, enroll every "
                       "ROOT/<identity>/ folder as an identity instead, skipping and listing unusable photos.")
    add_model_argument(p, positional=False)
    _gallery_arg(p)
    p.add_argument("name", nargs="?", metavar="NAME", help="identity name (created if new)")
    p.add_argument("images", nargs="*", metavar="IMG", help="images or folders of images of this person")
    p.add_argument("--folder", metavar="ROOT", help="enroll each subfolder of ROOT as one identity")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("identify", help="who in the gallery is each face in a photo? (1:N)",
                       description="For every face in each photo: the top-k identities by their best-matching "
                       "enrolled image at or above the model's 1:N (FPIR-calibrated) threshold, or 'unknown'.")
    p.add_argument("images", nargs="+", metavar="IMG", help="photo(s) to identify")
    add_model_argument(p, positional=False)
    _gallery_arg(p)
    p.add_argument("-k", type=int, default=5, help="how many identities to report per face (default 5)")
    _threshold_args(p, "FPIR")
    _index_arg(p)
    _json_arg(p)

    p = sub.add_parser("gallery", help="list, check or remove identities of a gallery",
                       description="Inspect or edit a gallery without loading a model.")
    gsub = p.add_subparsers(dest="gallery_command", required=True, metavar="ACTION", help="list, check or remove")
    g = gsub.add_parser("list", help="identities with image counts", description="List identities and image counts.")
    _gallery_arg(g, positional=True)
    _json_arg(g)
    g = gsub.add_parser("check", help="verify database integrity (and the thresholds a model would use)",
                        description="Run SQLite's integrity check and facelab's: every image has an embedding of the "
                        "right size, finite and of unit length, and every embedding has an image (read-only: works "
                        "on read-only media). With --model, also check that the model matches the gallery and "
                        "report the thresholds decisions would use, and why.")
    _gallery_arg(g, positional=True)
    g.add_argument("--model", "--bundle", dest="model", metavar="MODEL", help="model to check against the gallery")
    g = gsub.add_parser("remove", help="delete an identity", description="Delete an identity with its images and "
                        "embeddings (one transaction).")
    _gallery_arg(g, positional=True)
    g.add_argument("name", metavar="NAME", help="identity to delete")

    p = sub.add_parser("serve", help="HTTP service + web page for verify / identify / enroll",
                       description="Serve a model and a gallery over HTTP (FastAPI; OpenAPI schema at "
                       "/openapi.json). Writes need a bearer token, read from the environment variable named by "
                       "--token-env; if it is unset a random token is generated and printed. Listens on 127.0.0.1 "
                       "unless --host says otherwise, and answers only Host headers that are IP addresses, "
                       "localhost, the --host name or an --allowed-host (against DNS rebinding). "
                       "Identification uses the model's 1:N threshold unless --threshold/--target-fpir say "
                       "otherwise; /health reports which thresholds are in force and why.")
    add_model_argument(p, positional=False)
    _gallery_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--token-env", default="FACELAB_TOKEN", metavar="VAR",
                   help="environment variable holding the write token (default FACELAB_TOKEN; at least 16 "
                   "characters, or a warning is printed)")
    p.add_argument("--read-only", action="store_true",
                   help="refuse all writes (no token) and open the gallery read-only (works on read-only media)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name clients use to reach the service (repeat for several; '*' answers any Host "
                   "header, e.g. behind a reverse proxy that checks it)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest request body in MiB (default 8)")
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help="largest image accepted, in pixels, checked from its header before decoding (default: "
                   "FACELAB_MAX_PIXELS or 40,000,000); larger ones are answered 413")
    p.add_argument("--decode-memory-mb", type=float, default=1024.0,
                   help="memory all concurrent image decodes may hold together, in MiB (default 1024); requests "
                   "wait their turn beyond it (see --decode-wait)")
    p.add_argument("--decode-wait", type=float, default=120.0,
                   help="seconds a request may wait for decode memory before it is answered 503 (default 120)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client has to send its request body (default 30; 408 after)")
    p.add_argument("--lock-timeout", type=float, default=2.0,
                   help="seconds an enroll or delete waits for another process's write lock on the gallery "
                   "before answering 503 (default 2)")
    p.add_argument("--docs", action="store_true",
                   help="serve Swagger UI at /docs (off by default: the page loads its scripts from a CDN)")
    _threshold_args(p, "FPIR")
    p.add_argument("--verify-threshold", type=float, metavar="T", help="1:1 threshold for /verify (default: the "
                   "model's)")
    _index_arg(p)


# -- handlers ---------------------------------------------------------------------------------------------------------
def _cmd_bundle(args: argparse.Namespace) -> int:
    import dataclasses

    from facelab.inference.model import FaceModel
    from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION

    model = open_model(args, device="cpu")
    if args.no_flip and model.spec.flip_tta:  # other embeddings: the calibrated thresholds no longer apply
        model = FaceModel.from_module(model.backbone, model.architecture,
                                      dataclasses.replace(model.spec, flip_tta=False), source=model.source,
                                      kind=model.kind, info=model.info)
    th = model.thresholds
    if args.threshold is not None:
        th = th.replace(VERIFICATION, th.resolve(VERIFICATION, args.threshold))
    if args.identification_threshold is not None:
        th = th.replace(IDENTIFICATION, th.resolve(IDENTIFICATION, args.identification_threshold))
    model = model.with_thresholds(th)
    path = model.save_bundle(args.out)
    print(f"bundle: {path}\n{model.describe()}")
    if th.identification is None:
        print("note: no 1:N threshold: `facelab identify` and `serve` will ask for --threshold until you calibrate "
              "(facelab calibrate RUN, or facelab fit)", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from facelab.serving.export import EXPORTERS, export

    model = open_model(args, device="cpu")
    formats = EXPORTERS.names() if args.format == "all" else [args.format]
    ref = Path(args.model)
    out = Path(args.out) if args.out else (ref.parent if ref.is_file() else Path("."))
    stem = ref.name.split(".")[0] if ref.is_file() else ref.name or "model"
    for fmt in formats:
        suffix = EXPORTERS.build(fmt).suffix
        print(export(model, fmt, out / f"{stem}{suffix}", args.images, args.tolerance).line())
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from facelab.images import list_images
    from facelab.inference.model import unit
    from facelab.utils.io import atomic_open

    root = Path(args.dir)
    out = Path(args.out)
    if out.suffix != ".npz":
        raise FacelabError(f"--out must end in .npz, got {out}")
    tally = list_images(root, verify=False)  # decoding happens once, in the embedding step
    candidates = sorted(tally.images + [p for p, _ in tally.failed])
    if not candidates:
        raise FacelabError(f"no images under {root} ({tally.summary(0)})")
    model = open_model(args)
    res = model.embedder(batch_size=args.batch_size, progress=not args.quiet).embed(
        [root / p for p in candidates], desc="embed", strict=False, names=candidates)
    done = [candidates[i] for i in res.done]
    emb = unit(res.embeddings) if len(done) else np.zeros((0, model.embedding_dim), np.float32)
    with atomic_open(out, "wb") as fh:
        np.savez(fh, embeddings=emb, paths=np.array(done, dtype=str),
                 identities=np.array([p.split("/")[0] if "/" in p else "" for p in done], dtype=str),
                 methods=np.array(res.methods, dtype=str), fingerprint=np.array(model.fingerprint))
    failed = dict(tally.failed)
    failed.update({candidates[i]: r for i, r in res.failed})
    tally.images = done
    tally.failed = sorted(failed.items())
    undetected = res.counts().get("undetected", 0)
    note = f", {undetected} used without detection" if undetected else ""
    print(f"embedded {len(done)} images ({model.embedding_dim}-d, model {model.fingerprint[:12]}{note}) -> {out}")
    print(tally.summary(), file=sys.stderr)
    return 0


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(dumps(obj) if args.json else text)


def _open_gallery(args: argparse.Namespace, model: Any, create: bool = True, read_only: bool = False,
                  busy_timeout: float | None = None) -> Any:
    """The gallery of ``--gallery`` with ``model``; read-only opens never write to the file (they work on
    read-only media too)."""
    from facelab.serving.recognition import FaceGallery

    return FaceGallery(args.gallery, model, index=getattr(args, "index", "exact"), create=create,
                       read_only=read_only, busy_timeout=busy_timeout)


def _cmd_verify(args: argparse.Namespace) -> int:
    model = open_model(args)
    if args.identity is not None:
        if args.scorer != "cosine":
            raise FacelabError(f"--scorer {args.scorer} compares two photos; --identity uses the cosine threshold")
        if len(args.images) != 1 or not args.gallery:
            raise FacelabError("--identity verifies ONE photo against a gallery: give IMG --identity NAME "
                               "--gallery DB")
        with _open_gallery(args, model, create=False, read_only=True) as gallery:
            r = gallery.verify(args.images[0], args.identity, threshold=args.threshold, target_far=args.target)
        verdict = f"is {r.name}" if r.same_person else f"is not {r.name}"
        _emit(args, r.to_dict(), f"{verdict} (score {r.score:.4f}, threshold {r.threshold:.4f}: "
              f"{r.threshold_source})")
        return 0
    if len(args.images) != 2:
        raise FacelabError(f"verify compares two photos (or one with --identity), got {len(args.images)}")
    v = model.verify(args.images[0], args.images[1], threshold=args.threshold, target_far=args.target,
                     scorer=args.scorer)
    _emit(args, v.to_dict(), f"{'same person' if v.same_person else 'different people'} (score {v.score:.4f}, "
          f"threshold {v.threshold:.4f}: {v.threshold_source})")
    return 0


def _cmd_enroll(args: argparse.Namespace) -> int:
    from facelab.images import FileTally, list_images

    if bool(args.folder) == bool(args.name):
        raise FacelabError("give either NAME IMG... or --folder ROOT")
    if args.folder:
        root = Path(args.folder)
        tally = list_images(root, verify=False)
        per: dict[str, list[str]] = {}
        for rel in sorted(tally.images + [p for p, _ in tally.failed]):
            ident, sep, _ = rel.partition("/")
            if sep:
                per.setdefault(ident, []).append(rel)
            else:
                tally.ignored.append(rel)  # an image beside the identity folders belongs to no one
        if not per:
            raise FacelabError(f"no identity folders with images in {root} ({tally.summary(0)})")
        jobs = [(name, [root / r for r in rels], rels) for name, rels in per.items()]  # names relative to ROOT
        strict = False
    else:
        if not args.images:
            raise FacelabError(f"no images given for {args.name!r}")
        files: list[Path] = []
        tally = FileTally([], [], [], [])
        for raw in args.images:
            p = Path(raw)
            if p.is_dir():
                t = list_images(p, verify=False)
                files += [p / f for f in sorted(t.images + [f for f, _ in t.failed])]
                tally.ignored += [str(p / f) for f in t.ignored]
                tally.hidden += [str(p / f) for f in t.hidden]
            elif p.is_file():
                files.append(p)
            else:
                raise FacelabError(f"no such file or folder: {p}")
        jobs = [(args.name, files, [str(f) for f in files])]
        strict = True
    model = open_model(args)
    used = 0
    failed: list[tuple[str, str]] = []
    with _open_gallery(args, model) as gallery:
        for name, paths, labels in jobs:
            try:
                r = gallery.enroll(name, paths, strict=strict, names=labels)
            except FacelabError as exc:
                if strict:
                    raise
                failed += [(lab, str(exc)) for lab in labels]
                print(f"skipped {name}: {exc}", file=sys.stderr)
                continue
            used += r.added + len(r.duplicates)  # a duplicate is a usable image, already stored
            failed += list(r.failed)
            how = ", ".join(f"{n} {m}" for m, n in r.methods)
            dup = ""
            if r.duplicates:
                dup = (f"; {len(r.duplicates)} duplicate(s) skipped ({r.duplicates[0][0]} is already enrolled as "
                       f"{r.duplicates[0][1]})")
            print(f"enrolled {r.name}: {r.added} image(s) ({how}); {r.images} in all{dup}")
    tally.images, tally.failed = [], sorted(set(tally.failed) | set(failed))
    print(tally.summary(used), file=sys.stderr)
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    model = open_model(args)
    with _open_gallery(args, model, create=False, read_only=True) as gallery:
        t = gallery.identification_threshold(args.threshold, args.target)
        results = [(img, gallery.identify(img, args.k, threshold=t.value)) for img in args.images]
    if args.json:
        print(dumps([{"image": img, "threshold": t.value, "threshold_source": t.source,
                      "faces": [{**f.to_dict(), "threshold_source": t.source} for f in faces]}
                     for img, faces in results]))
        return 0
    print(f"1:N threshold {t.value:.4f} ({t.source})")
    for img, faces in results:
        for n, r in enumerate(faces, start=1):
            where = f" face {n}/{len(faces)} at {[round(v) for v in r.face.box]}" if len(faces) > 1 else ""
            near = f" (nearest {r.nearest.name} {r.nearest.score:.4f})" if r.nearest else " (empty gallery)"
            print(f"{img}{where}: {r.identity}" if r.identity else f"{img}{where}: unknown{near}")
            for m in r.matches:
                print(f"  {m.name}  {m.score:.4f}")
    return 0


def _gallery_list(args: argparse.Namespace) -> int:
    from facelab.serving.gallery import Gallery

    with Gallery(args.gallery, create=False, read_only=True) as gallery:
        rows = gallery.identities()
        fp = gallery.fingerprint
    if args.json:
        print(dumps({"model_fingerprint": fp, "identities": [r.__dict__ for r in rows]}))
        return 0
    print(f"{len(rows)} identities, {sum(r.images for r in rows)} images (model {fp[:12] if fp else '?'})")
    for r in rows:
        print(f"  {r.name}  {r.images}")
    return 0


def _gallery_check(args: argparse.Namespace) -> int:
    from facelab.serving.gallery import Gallery

    with Gallery(args.gallery, create=False, read_only=True) as gallery:
        problems = gallery.integrity_errors()
    for line in problems:
        print(line)
    if args.model:
        with _open_gallery(args, open_model(args), create=False, read_only=True) as fg:
            for task, t in fg.thresholds_in_force().items():
                print(f"{task} threshold: " + (f"{t['value']:.4f} ({t['source']})" if t else
                                               "none (calibrate the model, or give --threshold)"))
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


def _gallery_remove(args: argparse.Namespace) -> int:
    from facelab.serving.gallery import Gallery

    with Gallery(args.gallery, create=False) as gallery:
        n = gallery.remove(args.name)
    print(f"removed {args.name} ({n} image(s))")
    return 0


GALLERY_ACTIONS: dict[str, Handler] = {"list": _gallery_list, "check": _gallery_check, "remove": _gallery_remove}


def _cmd_gallery(args: argparse.Namespace) -> int:
    return GALLERY_ACTIONS[args.gallery_command](args)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _cmd_serve(args: argparse.Namespace) -> int:
    from facelab.inference.thresholds import IDENTIFICATION, VERIFICATION
    from facelab.utils.extras import require

    uvicorn = require("uvicorn", "serve")
    from facelab.images import max_pixels
    from facelab.serving.guards import DecodeBudget, decode_cost, default_allowed_hosts
    from facelab.serving.service import create_app
    from facelab.utils.allocator import tune_allocator

    tune_allocator("service")  # freed decode buffers go back to the system (see its docstring)

    cap = max_pixels() if args.max_pixels is None else args.max_pixels
    if cap <= 0:
        raise FacelabError(f"--max-pixels must be a positive number of pixels, got {cap}")
    if args.decode_memory_mb <= 0 or args.body_timeout <= 0 or args.lock_timeout < 0 or args.decode_wait < 0:
        raise FacelabError("--decode-memory-mb and --body-timeout must be > 0, --lock-timeout and --decode-wait >= 0")
    budget = DecodeBudget(int(args.decode_memory_mb * 1024 * 1024), wait=args.decode_wait)
    worst = decode_cost(1, cap, "RGBA+rotate")
    if worst > budget.budget:
        print(f"facelab: warning: one {cap:,}-pixel image may need {worst / 2**20:,.0f} MiB to decode, more than "
              f"--decode-memory-mb {args.decode_memory_mb:g}: such images are decoded one at a time",
              file=sys.stderr)
    token = None if args.read_only else os.environ.get(args.token_env) or None
    if token is None and not args.read_only:
        token = secrets.token_urlsafe(24)
        print(f"write token (set {args.token_env} to choose your own): {token}", file=sys.stderr)
    if not _is_loopback(args.host):
        print(f"facelab: warning: listening on {args.host}: reachable from other machines", file=sys.stderr)
    model = open_model(args)
    gallery = _open_gallery(args, model, read_only=args.read_only, busy_timeout=args.lock_timeout)
    ident = model.threshold(IDENTIFICATION, args.threshold, args.target) \
        if (args.threshold is not None or args.target is not None) else None
    verif = model.threshold(VERIFICATION, args.verify_threshold) if args.verify_threshold is not None else None
    for task, forced in ((IDENTIFICATION, ident), (VERIFICATION, verif)):
        t = forced or model.thresholds.get(task)
        print(f"{task} threshold: " + (t.describe() if t else "none: requests that need it get 422 until the model "
                                       "is calibrated"), file=sys.stderr)
    app = create_app(gallery, token, int(args.max_upload_mb * 1024 * 1024), identification=ident,
                     verification=verif, allowed_hosts=[*default_allowed_hosts(args.host), *args.allowed_host],
                     max_pixels=cap, decode_budget=budget, body_timeout=args.body_timeout, docs=args.docs)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


COMMANDS: dict[str, Handler] = {
    "bundle": _cmd_bundle, "export": _cmd_export, "embed": _cmd_embed, "verify": _cmd_verify,
    "enroll": _cmd_enroll, "identify": _cmd_identify, "gallery": _cmd_gallery, "serve": _cmd_serve,
}
