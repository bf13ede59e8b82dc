"""CLI glue for deployment: ``facelab bundle | export | embed | verify | enroll | identify | gallery | serve``.

Only argparse is imported at module level so ``facelab --help`` stays instant; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from facelab.cli.common import Handler, add_run_argument
from facelab.errors import FacelabError


def _bundle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, metavar="FILE", help="model bundle written by `facelab bundle`")


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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the deployment subcommands on the main parser's subparsers."""
    p = sub.add_parser("bundle", help="package a trained run as a deployable model bundle",
                       description="Write the backbone weights (safetensors) with their architecture, preprocessing, "
                       "embedding size, accept threshold and a fingerprint into one file. The threshold is "
                       "--threshold, else RUN/thresholds.json ('threshold', or tasks.verification.threshold), else "
                       "the EER threshold of RUN/metrics.json (facelab eval).")
    add_run_argument(p)
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="bundle file to write (.safetensors)")
    p.add_argument("--threshold", type=float, help="cosine accept threshold (overrides the run's calibration)")
    p.add_argument("--no-flip", action="store_true", help="embed without horizontal-flip test-time augmentation")

    p = sub.add_parser("export", help="export a bundle to ONNX and/or TorchScript with a parity check",
                       description="Export the embedding graph (backbone, flip TTA, L2 normalisation) and compare "
                       "its output with torch's on random and optional real inputs; the max abs diff is reported "
                       "and an export above --tolerance is removed with an error.")
    p.add_argument("bundle", metavar="BUNDLE", help="model bundle written by `facelab bundle`")
    p.add_argument("--format", default="all", help="onnx, torchscript or all (default)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: beside the bundle)")
    p.add_argument("--images", nargs="*", default=[], metavar="IMG", help="real images to include in the parity check")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted max abs diff (default 1e-4)")

    p = sub.add_parser("embed", help="embed every image under a folder into an .npz file",
                       description="Embed all images under DIR (recursively) with a bundle and save unit-length "
                       "float32 embeddings, relative paths, identities (first folder level) and the model "
                       "fingerprint to an .npz. Undecodable images are skipped and listed.")
    p.add_argument("dir", metavar="DIR", help="folder of images (any depth)")
    _bundle_arg(p)
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="embeddings file to write (.npz)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("verify", help="are two face images the same person? (1:1)",
                       description="Cosine score of the two embeddings; same person when the score reaches the "
                       "bundle's threshold.")
    p.add_argument("images", nargs=2, metavar="IMG", help="the two images to compare")
    _bundle_arg(p)
    p.add_argument("--threshold", type=float, help="accept threshold (default: the bundle's)")
    _json_arg(p)

    p = sub.add_parser("enroll", help="add photos of a person to a gallery",
                       description="Embed the images and store them under NAME in one transaction (all or nothing). "
                       "With --folder, enroll every ROOT/<identity>/ folder as an identity instead.")
    _bundle_arg(p)
    _gallery_arg(p)
    p.add_argument("name", nargs="?", metavar="NAME", help="identity name (created if new)")
    p.add_argument("images", nargs="*", metavar="IMG", help="images or folders of images of this person")
    p.add_argument("--folder", metavar="ROOT", help="enroll each subfolder of ROOT as one identity")

    p = sub.add_parser("identify", help="who in the gallery is this? (1:N)",
                       description="Top-k identities by their best-matching enrolled image, or 'unknown' when none "
                       "reaches the bundle's threshold.")
    p.add_argument("images", nargs="+", metavar="IMG", help="image(s) to identify")
    _bundle_arg(p)
    _gallery_arg(p)
    p.add_argument("-k", type=int, default=5, help="how many identities to report (default 5)")
    p.add_argument("--threshold", type=float, help="accept threshold (default: the bundle's)")
    _index_arg(p)
    _json_arg(p)

    p = sub.add_parser("gallery", help="list, check or remove identities of a gallery",
                       description="Inspect or edit a gallery without loading a model.")
    gsub = p.add_subparsers(dest="gallery_command", required=True, metavar="ACTION", help="list, check or remove")
    g = gsub.add_parser("list", help="identities with image counts", description="List identities and image counts.")
    _gallery_arg(g, positional=True)
    _json_arg(g)
    g = gsub.add_parser("check", help="verify database integrity", description="Run SQLite's integrity check and "
                        "facelab's: every image has an embedding of the right size, finite and of unit length, and "
                        "every embedding has an image. Read-only: works on a gallery on read-only media.")
    _gallery_arg(g, positional=True)
    g = gsub.add_parser("remove", help="delete an identity", description="Delete an identity with its images and "
                        "embeddings (one transaction).")
    _gallery_arg(g, positional=True)
    g.add_argument("name", metavar="NAME", help="identity to delete")

    p = sub.add_parser("serve", help="HTTP service + web page for verify / identify / enroll",
                       description="Serve a bundle and a gallery over HTTP (FastAPI; OpenAPI schema at "
                       "/openapi.json). Writes need a bearer token, read from the environment variable named by "
                       "--token-env; if it is unset a random token is generated and printed. Listens on 127.0.0.1 "
                       "unless --host says otherwise, and answers only Host headers that are IP addresses, "
                       "localhost, the --host name or an --allowed-host (against DNS rebinding).")
    _bundle_arg(p)
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
                   "wait their turn beyond it (503 after 30 s)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client has to send its request body (default 30; 408 after)")
    p.add_argument("--lock-timeout", type=float, default=2.0,
                   help="seconds an enroll or delete waits for another process's write lock on the gallery "
                   "before answering 503 (default 2)")
    p.add_argument("--docs", action="store_true",
                   help="serve Swagger UI at /docs (off by default: the page loads its scripts from a CDN)")
    _index_arg(p)


# -- handlers ---------------------------------------------------------------------------------------------------------
def _load_bundle(path: str) -> Any:
    from facelab.serving.bundle import Bundle

    return Bundle.load(path)


def _cmd_bundle(args: argparse.Namespace) -> int:
    from facelab.serving.bundle import Bundle

    bundle = Bundle.from_run(args.run, args.threshold, False if args.no_flip else None)
    path = bundle.save(args.out)
    m = bundle.meta
    print(f"bundle: {path}\nfingerprint: {m.fingerprint}\narchitecture: {m.architecture['backbone']}, input "
          f"{m.input_size}x{m.input_size} {m.colour_order}, embedding {m.embedding_dim}, flip TTA {m.flip_tta}\n"
          f"threshold: {m.threshold:.4f} (from {m.threshold_source})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from facelab.serving.export import EXPORTERS, export

    bundle = _load_bundle(args.bundle)
    formats = EXPORTERS.names() if args.format == "all" else [args.format]
    out = Path(args.out) if args.out else Path(args.bundle).parent
    stem = Path(args.bundle).name.split(".")[0]
    for fmt in formats:
        suffix = EXPORTERS.build(fmt).suffix
        print(export(bundle, fmt, out / f"{stem}{suffix}", args.images, args.tolerance).line())
    return 0


def _image_files(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (by content, sorted, recursive)."""
    from facelab.images import list_images

    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            tally = list_images(p, verify=False)  # failed ones are kept so the embedding step reports them
            files += sorted([p / f for f in tally.images] + [p / f for f, _ in tally.failed])
        elif p.is_file():
            files.append(p)
        else:
            raise FacelabError(f"no such file or folder: {p}")
    return files


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from facelab.utils.io import atomic_open

    root = Path(args.dir)
    if not root.is_dir():
        raise FacelabError(f"not a folder: {root}")
    files = _image_files([args.dir])
    if not files:
        raise FacelabError(f"no image files under {root}")
    bundle = _load_bundle(args.bundle)
    emb, done, failed = bundle.embed_files(files, args.batch_size, progress=not args.quiet, strict=False)
    rel = [Path(p).relative_to(root) for p in done]
    out = Path(args.out)
    if out.suffix != ".npz":
        raise FacelabError(f"--out must end in .npz, got {out}")
    with atomic_open(out, "wb") as fh:
        np.savez(fh, embeddings=emb, paths=np.array([str(r) for r in rel]),
                 identities=np.array([r.parts[0] if len(r.parts) > 1 else "" for r in rel]),
                 fingerprint=np.array(bundle.fingerprint), threshold=np.array(bundle.threshold))
    skipped = f"; {len(failed)} skipped (listed on stderr)" if failed else ""
    print(f"embedded {len(done)} images ({emb.shape[1]}-d, model {bundle.fingerprint[:12]}) -> {out}{skipped}")
    for path, reason in failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


def _emit(args: argparse.Namespace, obj: Any, text: str) -> None:
    from facelab.utils.io import dumps_json

    print(dumps_json(obj) if args.json else text)


def _cmd_verify(args: argparse.Namespace) -> int:
    bundle = _load_bundle(args.bundle)
    emb, _, _ = bundle.embed_files(args.images)
    threshold = bundle.threshold if args.threshold is None else args.threshold
    score = bundle.score(emb[0], emb[1])
    same = score >= threshold
    _emit(args, {"score": score, "threshold": threshold, "same_person": same},
          f"{'same person' if same else 'different people'} (score {score:.4f}, threshold {threshold:.4f})")
    return 0


def _open_gallery(args: argparse.Namespace, bundle: Any | None, create: bool = True, read_only: bool = False
                  ) -> Any:
    """The gallery of ``--gallery`` / GALLERY; read-only opens never write to the file (they work on read-only
    media too)."""
    from facelab.serving.gallery import Gallery

    timeout = getattr(args, "lock_timeout", None)
    options: dict[str, Any] = {"read_only": read_only, **({"busy_timeout": timeout} if timeout is not None else {})}
    if bundle is None:
        return Gallery(args.gallery, create=False, **options)
    return Gallery(args.gallery, bundle.fingerprint, bundle.meta.embedding_dim, getattr(args, "index", "exact"),
                   create=create, **options)


def _cmd_enroll(args: argparse.Namespace) -> int:
    if bool(args.folder) == bool(args.name):
        raise FacelabError("give either NAME IMG... or --folder ROOT")
    if args.folder:
        root = Path(args.folder)
        if not root.is_dir():
            raise FacelabError(f"not a folder: {root}")
        jobs = [(d.name, [str(d)]) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    else:
        if not args.images:
            raise FacelabError(f"no images given for {args.name!r}")
        jobs = [(args.name, args.images)]
    from facelab.serving.gallery import check_name, content_hash

    for name, _ in jobs:
        check_name(name)  # every name is checked before anything is embedded or stored
    bundle = _load_bundle(args.bundle)
    with _open_gallery(args, bundle) as gallery:
        for name, paths in jobs:
            files = _image_files(paths)
            emb, done, _ = bundle.embed_files(files)
            hashes = [content_hash(Path(p).read_bytes()) for p in done]
            result = gallery.enroll(name, zip(done, emb, hashes, strict=True))
            dup = ""
            if result.duplicates:
                first = result.duplicates[0]
                dup = (f"; {len(result.duplicates)} duplicate(s) skipped ({first[0]} is already enrolled as "
                       f"{first[1]})")
            print(f"enrolled {result.name}: {result.added} image(s){dup}")
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    bundle = _load_bundle(args.bundle)
    threshold = bundle.threshold if args.threshold is None else args.threshold
    emb, done, _ = bundle.embed_files(args.images)
    with _open_gallery(args, bundle, create=False, read_only=True) as gallery:
        results = [gallery.identify(e, threshold, args.k) for e in emb]
    if args.json:
        from facelab.utils.io import dumps_json

        print(dumps_json([{"image": p, **r.to_dict()} for p, r in zip(done, results, strict=True)]))
        return 0
    for path, r in zip(done, results, strict=True):
        near = f" (nearest {r.nearest.name} {r.nearest.score:.4f})" if r.nearest else " (empty gallery)"
        print(f"{path}: {r.identity}" if r.identity else f"{path}: unknown{near}, threshold {threshold:.4f}")
        for m in r.matches:
            print(f"  {m.name}  {m.score:.4f}")
    return 0


def _gallery_list(args: argparse.Namespace) -> int:
    with _open_gallery(args, None, read_only=True) as gallery:
        rows = gallery.identities()
        fp = gallery.fingerprint
    if args.json:
        from facelab.utils.io import dumps_json

        print(dumps_json({"model_fingerprint": fp, "identities": [r.__dict__ for r in rows]}))
        return 0
    print(f"{len(rows)} identities, {sum(r.images for r in rows)} images (model {fp[:12]})")
    for r in rows:
        print(f"  {r.name}  {r.images}")
    return 0


def _gallery_check(args: argparse.Namespace) -> int:
    with _open_gallery(args, None, read_only=True) as gallery:
        problems = gallery.integrity_errors()
    for line in problems:
        print(line)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


def _gallery_remove(args: argparse.Namespace) -> int:
    with _open_gallery(args, None) as gallery:
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
    from facelab.utils.extras import require

    uvicorn = require("uvicorn", "serve")
    from facelab.images import max_pixels
    from facelab.serving.guards import DecodeBudget, decode_cost, default_allowed_hosts
    from facelab.serving.service import create_app

    cap = max_pixels() if args.max_pixels is None else args.max_pixels
    if cap <= 0:
        raise FacelabError(f"--max-pixels must be a positive number of pixels, got {cap}")
    if args.decode_memory_mb <= 0 or args.body_timeout <= 0 or args.lock_timeout < 0:
        raise FacelabError("--decode-memory-mb and --body-timeout must be > 0, --lock-timeout >= 0")
    budget = DecodeBudget(int(args.decode_memory_mb * 1024 * 1024))
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
    allowed = [*default_allowed_hosts(args.host), *args.allowed_host]
    bundle = _load_bundle(args.bundle)
    gallery = _open_gallery(args, bundle, read_only=args.read_only)
    app = create_app(bundle, gallery, token, int(args.max_upload_mb * 1024 * 1024), allowed_hosts=allowed,
                     max_pixels=cap, decode_budget=budget, body_timeout=args.body_timeout, docs=args.docs)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


COMMANDS: dict[str, Handler] = {
    "bundle": _cmd_bundle, "export": _cmd_export, "embed": _cmd_embed, "verify": _cmd_verify,
    "enroll": _cmd_enroll, "identify": _cmd_identify, "gallery": _cmd_gallery, "serve": _cmd_serve,
}
