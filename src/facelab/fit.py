"""``facelab fit DATA --out RUN``: from a folder of faces to a running service in one command.

The steps, each leaving its report in RUN:

1. train on DATA (the same recipe ``facelab train`` uses, options included) -> checkpoint.pt, training curves;
2. evaluate on the held-out split -> metrics.json, roc.png, scores_hist.png;
3. calibrate both thresholds on the split (``facelab calibrate``): 1:1 at a target FAR over all pairs of the unseen
   identities; 1:N at a target FPIR with the deployment's own shape -- the training identities enrolled, their
   held-out images as mated searches and every image of the unseen identities as strangers -> thresholds.json;
4. bundle the model with both thresholds -> model.safetensors;
5. enroll the training identities (their training images) into a gallery -> gallery.db;
6. check the strangers honestly: the 1:N threshold is re-calibrated on half of the unseen identities and the FPIR
   measured on the other half (and the other way round), so the report shows how the threshold does on strangers
   it was not chosen on -> fit.json; then print the ``facelab serve`` line.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from facelab.config import load_config
from facelab.engine import train
from facelab.errors import FacelabError
from facelab.evaluation.calibration import calibrate, gallery_searches
from facelab.evaluation.identification import held_out_fpir
from facelab.evaluation.pairs import validation_pairs
from facelab.evaluation.protocol import evaluate
from facelab.inference.model import load_model
from facelab.serving.recognition import FaceGallery
from facelab.utils.io import write_json

BUNDLE, GALLERY, REPORT = "model.safetensors", "gallery.db", "fit.json"


@dataclass
class FitReport:
    """Where everything landed and the figures a deployer needs."""

    run: str
    bundle: str
    gallery: str
    identities_enrolled: int
    images_enrolled: int
    closed_top1: float | None
    open_roc_auc: float | None
    verification_threshold: float | None
    identification_threshold: float | None
    target_fpir: float
    strangers: int
    strangers_accepted: int
    held_out_fpir: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit(data: str | Path, out: str | Path, *, config: str | Path | None = None, overrides: list[str] | None = None,
        target_far: float = 1e-3, target_fpir: float = 1e-2, quiet: bool = False,
        base: dict[str, Any] | None = None) -> FitReport:
    """Run the steps of the module docstring (``base``: a config dict under ``config``, e.g. the fine-tune recipe).
    Raises FacelabError from any step (nothing half-written: every file is written atomically; a failed step leaves
    the earlier steps' files in RUN)."""
    t0 = time.perf_counter()
    out = Path(out)
    cfg = load_config(config, [f"data.root={data}", f"out_dir={out}", *(overrides or [])], base=base)
    result = train(cfg, quiet=quiet, pair_reader=validation_pairs)
    model = load_model(result.out_dir)
    metrics = evaluate(model, quiet=quiet)
    calibrate(model, target=target_far, open_target=target_fpir, open_dev="gallery", quiet=quiet)
    model = load_model(result.out_dir)  # now with the calibrated thresholds
    if model.thresholds.identification is None:
        raise FacelabError(f"{out}: no 1:N threshold could be calibrated (the split needs held-out images of "
                           f"training identities and unseen identities); set data.split options")
    bundle = model.save_bundle(out / BUNDLE)
    lr = model.run
    root = Path(lr.cfg.data.root)  # type: ignore[union-attr]
    manifest = lr.manifest  # type: ignore[union-attr]
    gallery_path = out / GALLERY
    if gallery_path.exists():
        gallery_path.unlink()  # a fresh run's gallery: rebuilt from scratch, never appended to
    images = 0
    with FaceGallery(gallery_path, model) as gallery:
        for label, name in enumerate(manifest.classes):
            paths = [root / p for p, y in manifest.train if y == label]
            images += gallery.enroll(name, paths, cache=True).added
    embedder = model.embedder(cache=True)
    s = gallery_searches(model, embedder, root)
    strangers = [manifest.open_identities[y] for _, y in manifest.open_test]
    t = model.thresholds.identification
    accepted = int((s.top_score[~s.mated] >= t.value).sum())
    report = FitReport(str(out), str(bundle), str(gallery_path), len(manifest.classes), images,
                       metrics.get("closed_set", {}).get("top1"),
                       metrics.get("open_set", {}).get("verification", {}).get("roc_auc"),
                       model.thresholds.verification.value if model.thresholds.verification else None, t.value,
                       target_fpir, len(strangers), accepted, held_out_fpir(s, strangers, target_fpir),
                       time.perf_counter() - t0)
    write_json(out / REPORT, report.to_dict())
    return report


def format_fit(r: FitReport) -> str:
    held = f"{r.held_out_fpir:.3f}" if r.held_out_fpir is not None else "n/a"
    top1 = f"{r.closed_top1:.3f}" if r.closed_top1 is not None else "n/a"
    auc = f"{r.open_roc_auc:.3f}" if r.open_roc_auc is not None else "n/a"
    return "\n".join([
        f"run: {r.run} ({r.seconds:.0f} s)",
        f"closed-set top-1 {top1}, open-set ROC AUC {auc} (metrics.json)",
        f"1:1 threshold {r.verification_threshold:.4f}, 1:N threshold {r.identification_threshold:.4f} at FPIR "
        f"{r.target_fpir:g} (thresholds.json)" if r.verification_threshold is not None else
        f"1:N threshold {r.identification_threshold:.4f} at FPIR {r.target_fpir:g} (thresholds.json)",
        f"strangers named as someone: {r.strangers_accepted} of {r.strangers} unseen-identity images "
        f"(threshold chosen on them); {held} on strangers it was not chosen on (2-fold)",
        f"bundle: {r.bundle}",
        f"gallery: {r.gallery} ({r.identities_enrolled} identities, {r.images_enrolled} images)",
        f"serve it: facelab serve --model {r.bundle} --gallery {r.gallery}",
    ])
