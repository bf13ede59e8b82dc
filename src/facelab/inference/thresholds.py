"""The two accept thresholds a deployment needs, and where each came from.

* **1:1 verification** ("is this Alice?", "same person?"): accept when the cosine score reaches the threshold. It is
  calibrated at a false accept rate, FAR = impostor pairs accepted / impostor pairs (ISO/IEC 19795-1).
* **1:N open-set identification** ("who is this, if anyone?"): a probe is named when its best gallery score reaches
  the threshold. It is calibrated at a false positive identification rate, FPIR = non-mated searches that return
  anyone / non-mated searches (ISO/IEC 19795-1, NIST FRVT 1:N). A 1:N search takes the best of N candidates, so the
  same threshold accepts strangers far more often in 1:N than impostors in 1:1: using the 1:1 threshold for
  identification names most strangers as someone. Never mix the two.

A calibrated threshold keeps a downsampled operating curve (threshold -> FAR or FPIR on the dev data) so another
target rate can be chosen later (``--target-fpir``) without the dev data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facelab.errors import FacelabError

VERIFICATION, IDENTIFICATION = "verification", "identification"
#: the error rate each task is calibrated at
RATE_NAME = {VERIFICATION: "FAR", IDENTIFICATION: "FPIR"}
CURVE_POINTS = 256
MAX_SOURCE = 300


def _finite(x: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if not isinstance(x, int | float) or isinstance(x, bool) or not math.isfinite(x) or not lo <= x <= hi:
        raise FacelabError(f"{what} must be a finite number in [{lo:g}, {hi:g}], got {x!r}")
    return float(x)


def operating_curve(negative_scores: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """Rate of negatives accepted (FAR for impostor pairs, FPIR for non-mated top scores) at thresholds spanning the
    negatives' scores, highest threshold first; at most ``points`` points, always including the extremes."""
    s = np.sort(np.asarray(negative_scores, np.float64))[::-1]
    if s.size == 0:
        return {"threshold": [], "rate": [], "negatives": 0}
    idx = np.unique(np.r_[np.round(np.geomspace(1, s.size, min(points, s.size))).astype(int) - 1, 0, s.size - 1])
    thr = s[idx]
    rate = (s[None, :] >= thr[:, None]).sum(1) / s.size
    return {"threshold": thr.tolist(), "rate": rate.tolist(), "negatives": int(s.size)}


@dataclass(frozen=True)
class Threshold:
    """An accept threshold on the cosine score and its provenance.

    ``task``: verification or identification. ``target``: the FAR / FPIR asked for (None: chosen another way, e.g.
    EER or given by hand). ``achieved``: that rate measured on the dev data. ``source``: a sentence for people.
    ``curve``: the dev operating curve, for :meth:`at`."""

    task: str
    value: float
    source: str
    target: float | None = None
    achieved: float | None = None
    curve: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.task not in RATE_NAME:
            raise FacelabError(f"threshold task must be {VERIFICATION} or {IDENTIFICATION}, got {self.task!r}")
        _finite(self.value, f"{self.task} threshold", -1.0, 1.0)
        if self.target is not None:
            _finite(self.target, f"{self.task} target {RATE_NAME[self.task]}", 0.0, 1.0)
        if self.achieved is not None:
            _finite(self.achieved, f"{self.task} achieved {RATE_NAME[self.task]}", 0.0, 1.0)
        if not isinstance(self.source, str) or len(self.source) > MAX_SOURCE:
            raise FacelabError(f"{self.task} threshold source must be a string of at most {MAX_SOURCE} characters")
        if self.curve is not None:
            t, r = self.curve.get("threshold"), self.curve.get("rate")
            if not (isinstance(t, list) and isinstance(r, list) and len(t) == len(r) <= 4 * CURVE_POINTS):
                raise FacelabError(f"{self.task} operating curve is malformed")
            for x in t:
                _finite(x, f"{self.task} curve threshold", -1.0, 1.0)
            for x in r:
                _finite(x, f"{self.task} curve rate", 0.0, 1.0)

    @property
    def rate_name(self) -> str:
        return RATE_NAME[self.task]

    def describe(self) -> str:
        """E.g. ``0.4120 (FPIR 0.05 calibrated on 100 non-mated dev searches, achieved 0.04)``."""
        return f"{self.value:.4f} ({self.source})"

    def at(self, target: float) -> Threshold:
        """The lowest threshold of the dev curve whose rate does not exceed ``target``.

        Raises:
            FacelabError: no curve was kept, or the dev data had too few negatives to measure ``target``.
        """
        _finite(target, f"target {self.rate_name}", 0.0, 1.0)
        if not self.curve or not self.curve.get("threshold"):
            raise FacelabError(f"this model's {self.task} threshold has no dev curve to choose a {self.rate_name} "
                               f"from: calibrate it (facelab calibrate) or give --threshold")
        n = int(self.curve.get("negatives", 0))
        if n and target * n < 1:
            raise FacelabError(f"{self.rate_name} {target:g} cannot be measured on {n} dev negatives (need at least "
                               f"{math.ceil(1 / target)}): calibrate on more data or give --threshold")
        thr, rate = np.asarray(self.curve["threshold"]), np.asarray(self.curve["rate"])
        ok = rate <= target
        # thresholds run high -> low, rates low -> high: the last point still within target is the lowest threshold
        value = float(np.nextafter(thr[0], np.inf)) if not ok.any() else float(thr[np.nonzero(ok)[0][-1]])
        value = min(1.0, value)
        achieved = float(rate[np.nonzero(ok)[0][-1]]) if ok.any() else 0.0
        return Threshold(self.task, value, f"{self.rate_name} {target:g} on the dev curve of: {self.source}"[
                         :MAX_SOURCE], target, achieved, self.curve)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "value": self.value, "source": self.source, "target": self.target,
                "achieved": self.achieved, "curve": self.curve}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Threshold:
        if not isinstance(d, dict):
            raise FacelabError(f"{where}: a threshold must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"task", "value", "source", "target", "achieved", "curve"}
        if unknown:
            raise FacelabError(f"{where}: unknown threshold key(s) {', '.join(sorted(unknown))}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise FacelabError(f"{where}: malformed threshold ({exc})") from None
        except FacelabError as exc:
            raise FacelabError(f"{where}: {exc}") from None

    @classmethod
    def from_calibration(cls, entry: dict[str, Any]) -> Threshold | None:
        """From a ``thresholds.json`` entry written by ``facelab calibrate`` (cosine entries only)."""
        if entry.get("score") != "cosine" or entry.get("threshold") is None:
            return None
        task = entry.get("task")
        rate = RATE_NAME.get(str(task), "rate")
        achieved = (entry.get("achieved") or {}).get(rate.lower())
        n = entry.get("pairs", entry.get("searches", {}))
        size = f" on {n.get('impostor', n.get('non_mated'))} dev negatives" if isinstance(n, dict) else ""
        objective = entry.get("objective", "?")
        goal = f"{rate} {entry['target']:g}" if entry.get("target") is not None else str(objective)
        source = f"calibrated for {goal}{size} ({entry.get('dev', 'dev data')})"
        return cls(str(task), float(entry["threshold"]), source[:MAX_SOURCE], entry.get("target"),
                   achieved if isinstance(achieved, float) else None, entry.get("curve"))


@dataclass(frozen=True)
class Thresholds:
    """Both decisions' thresholds (either may be missing until calibrated)."""

    verification: Threshold | None = None
    identification: Threshold | None = None

    def get(self, task: str) -> Threshold | None:
        return self.verification if task == VERIFICATION else self.identification

    def require(self, task: str) -> Threshold:
        """The threshold for ``task``, or a FacelabError that says how to get one."""
        t = self.get(task)
        if t is None:
            how = ("`facelab calibrate` on a run (or `facelab eval`, whose EER threshold is used for 1:1)"
                   if task == VERIFICATION else
                   "`facelab calibrate` with unseen identities or --gallery/--probes dev folders, or `facelab fit`")
            raise FacelabError(f"this model has no {task} threshold: use {how}, or give --threshold")
        return t

    def resolve(self, task: str, threshold: float | None = None, target: float | None = None) -> Threshold:
        """The threshold in force: an explicit value, else the calibrated one re-targeted to ``target``, else the
        calibrated one."""
        if threshold is not None and target is not None:
            raise FacelabError(f"give either a threshold or a target {RATE_NAME[task]}, not both")
        if threshold is not None:
            return Threshold(task, _finite(threshold, "--threshold (a cosine score)", -1.0, 1.0), "given explicitly")
        t = self.require(task)
        return t.at(target) if target is not None else t

    def replace(self, task: str, value: Threshold | None) -> Thresholds:
        return Thresholds(value, self.identification) if task == VERIFICATION else Thresholds(self.verification,
                                                                                               value)

    def to_dict(self) -> dict[str, Any]:
        return {k: (t.to_dict() if t is not None else None)
                for k, t in ((VERIFICATION, self.verification), (IDENTIFICATION, self.identification))}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Thresholds:
        if not isinstance(d, dict) or set(d) - {VERIFICATION, IDENTIFICATION}:
            raise FacelabError(f"{where}: thresholds must map {VERIFICATION}/{IDENTIFICATION} to a threshold")
        out = {}
        for task in (VERIFICATION, IDENTIFICATION):
            raw = d.get(task)
            t = None if raw is None else Threshold.from_dict(raw, f"{where} {task}")
            if t is not None and t.task != task:
                raise FacelabError(f"{where}: the {task} entry says it is a {t.task} threshold")
            out[task] = t
        return cls(**out)
