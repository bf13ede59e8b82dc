"""Loss zoo: each loss against a float64 formula written here independently (numpy), pytorch-metric-learning as an
oracle where it has the loss, float64 gradcheck, hand-built mining cases, degenerate batches, option errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

from facelab.config import LossConfig, OptimConfig, load_config, load_yaml
from facelab.demo import demo_config_path
from facelab.engine.optim import build_optimizer, build_scheduler, param_groups
from facelab.errors import FacelabError
from facelab.losses import (
    LOSSES,
    ArcFace,
    CenterLoss,
    CombinedMargin,
    ContrastiveLoss,
    CosFace,
    CosineClassifier,
    FaceLoss,
    JointLoss,
    SoftmaxCE,
    SphereFace,
    TripletLoss,
    build_loss,
    mine_batch_all,
    mine_batch_hard,
    mine_semi_hard,
)

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "losses"
D, C, B = 6, 5, 12


def batch(seed: int = 0, n: int = B, classes: int = C, dim: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    return x, y


def spread_weights(loss: FaceLoss, seed: int = 1) -> FaceLoss:
    """Replace the tiny initial class weights by well-spread ones and move to float64."""
    loss = loss.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return loss


# ----------------------------------------------------------------------------------------------------------------
# independent float64 references (numpy, per formula in the papers)


def ref_cos(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T


def ref_ce(logits: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> float:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    return float(np.mean((1 - smoothing) * nll - smoothing * logp.mean(1)))


def ref_margin_loss(x: np.ndarray, w: np.ndarray, y: np.ndarray, target_fn, scale, smoothing: float = 0.0) -> float:
    cos = ref_cos(x, w)
    s = np.linalg.norm(x, axis=1, keepdims=True) if scale is None else scale
    adjusted = cos.copy()
    for i, label in enumerate(y):
        adjusted[i, label] = target_fn(cos[i, label])
    return ref_ce(s * adjusted, y, smoothing)


def ref_arcface_target(m: float):
    def f(c: float) -> float:
        theta = math.acos(c)
        return math.cos(theta + m) if theta + m <= math.pi else c - m * math.sin(m)

    return f


def ref_combined_target(m1: float, m2: float, m3: float):
    def f(c: float) -> float:
        phase = m1 * math.acos(c) + m2
        k = math.floor(phase / math.pi)
        return (-1) ** k * math.cos(phase) - 2 * k - m3

    return f


def ref_sphereface_target(m: int, lam: float):
    """psi via the Chebyshev polynomial T_m(cos theta) = cos(m theta): no acos in the value, unlike the library."""

    def f(c: float) -> float:
        cos_m_theta = np.polynomial.chebyshev.chebval(c, [0] * m + [1])
        k = math.floor(m * math.acos(c) / math.pi)
        psi = (-1) ** k * cos_m_theta - 2 * k
        return (lam * c + psi) / (1 + lam)

    return f


def ref_distances(x: np.ndarray, distance: str) -> np.ndarray:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    if distance == "cosine":
        return 1 - u @ u.T
    return ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)


def ref_triplets(dist: np.ndarray, y: np.ndarray, mining: str, margin: float) -> list[tuple[int, int, int]]:
    n = len(y)
    out = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and y[p] == y[a]]
        neg = [q for q in range(n) if y[q] != y[a]]
        if mining == "batch_hard":
            if pos and neg:
                out.append((a, max(pos, key=lambda p: dist[a, p]), min(neg, key=lambda q: dist[a, q])))
            continue
        for p in pos:
            for q in neg:
                if mining == "batch_all" or dist[a, p] < dist[a, q] < dist[a, p] + margin:
                    out.append((a, p, q))
    return out


def ref_mean_nonzero(values: list[float]) -> float:
    nonzero = [v for v in values if v > 0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


# ----------------------------------------------------------------------------------------------------------------
# classification family vs float64 formulas

MARGIN_CASES = {
    "normface": (lambda: CosineClassifier(D, C, scale=10.0, label_smoothing=0.1), lambda c: c, 10.0, 0.1),
    "cosface": (lambda: CosFace(D, C, scale=10.0, margin=0.35), lambda c: c - 0.35, 10.0, 0.0),
    "arcface": (lambda: ArcFace(D, C, scale=10.0, margin=0.5), ref_arcface_target(0.5), 10.0, 0.0),
    "arcface_big_margin": (lambda: ArcFace(D, C, scale=8.0, margin=1.4), ref_arcface_target(1.4), 8.0, 0.0),
    "combined": (lambda: CombinedMargin(D, C, scale=12.0, m1=1.3, m2=0.4, m3=0.15, label_smoothing=0.05),
                 ref_combined_target(1.3, 0.4, 0.15), 12.0, 0.05),
    "sphereface_norm": (lambda: SphereFace(D, C, margin=4, lambda_base=0.0, lambda_min=0.0),
                        ref_sphereface_target(4, 0.0), None, 0.0),
    "sphereface_annealed": (lambda: SphereFace(D, C, margin=3, scale=7.0, lambda_base=2.5, lambda_min=2.5),
                            ref_sphereface_target(3, 2.5), 7.0, 0.0),
}


@pytest.mark.parametrize("case", sorted(MARGIN_CASES))
def test_margin_losses_match_float64_formula(case: str) -> None:
    make, target_fn, scale, smoothing = MARGIN_CASES[case]
    loss = spread_weights(make())
    x, y = batch()
    out = loss(x, y)
    expected = ref_margin_loss(x.numpy(), loss.weight.detach().numpy(), y.numpy(), target_fn, scale, smoothing)
    assert out.loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-10)
    # logits for accuracy carry no margin: scale * cos
    s = np.linalg.norm(x.numpy(), axis=1, keepdims=True) if scale is None else scale
    np.testing.assert_allclose(out.logits.numpy(), s * ref_cos(x.numpy(), loss.weight.detach().numpy()), rtol=1e-9)
    np.testing.assert_allclose(loss.logits(x).detach().numpy(), out.logits.numpy(), rtol=1e-12)


def test_arcface_big_margin_case_exercises_the_fallback() -> None:
    """The arcface_big_margin case above is only meaningful if some target angle is past pi - m."""
    loss = spread_weights(ArcFace(D, C, scale=8.0, margin=1.4))
    x, y = batch()
    theta = torch.acos(loss.cosine(x).gather(1, y[:, None]))
    assert (theta > math.pi - 1.4).any() and (theta < math.pi - 1.4).any()


def test_softmax_ce_matches_float64_formula() -> None:
    loss = spread_weights(SoftmaxCE(D, C, label_smoothing=0.2))
    x, y = batch()
    w, b = loss.fc.weight.detach().numpy(), loss.fc.bias.detach().numpy()
    assert loss(x, y).loss.item() == pytest.approx(ref_ce(x.numpy() @ w.T + b, y.numpy(), 0.2), rel=1e-12)


def test_combined_margin_reduces_to_arcface_cosface_and_sphereface_psi() -> None:
    x, y = batch()
    arc, comb_arc = spread_weights(ArcFace(D, C, 10.0, 0.5)), spread_weights(CombinedMargin(D, C, 10.0, 1.0, 0.5, 0.0))
    cos, comb_cos = spread_weights(CosFace(D, C, 10.0, 0.3)), spread_weights(CombinedMargin(D, C, 10.0, 1.0, 0.0, 0.3))
    sph, comb_sph = (spread_weights(SphereFace(D, C, 4, 10.0, lambda_base=0.0, lambda_min=0.0)),
                     spread_weights(CombinedMargin(D, C, 10.0, 4.0, 0.0, 0.0)))
    for a, b in ((arc, comb_arc), (cos, comb_cos), (sph, comb_sph)):
        assert a(x, y).loss.item() == pytest.approx(b(x, y).loss.item(), rel=1e-12)


def test_psi_is_continuous_and_decreasing() -> None:
    from facelab.losses import angular_psi

    cos = torch.cos(torch.linspace(0, math.pi, 20001, dtype=torch.float64))[1:-1]
    for m1, m2 in ((4.0, 0.0), (2.5, 0.3), (1.0, 0.5)):
        psi = angular_psi(cos, m1, m2)
        steps = psi[1:] - psi[:-1]
        assert (steps < 0).all(), (m1, m2)
        assert steps.abs().max() < 1e-2  # no jump at the k boundaries


# ----------------------------------------------------------------------------------------------------------------
# pytorch-metric-learning as an oracle (test-only dependency)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")


def _pml_classifier(pml_loss, ours: FaceLoss) -> torch.nn.Module:
    pml_loss.W.data = ours.weight.detach().t().clone()
    return pml_loss


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notice from inside the oracle's SphereFace
@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface", "normface"])
def test_margin_losses_match_pytorch_metric_learning(name: str) -> None:
    x, y = batch(3)
    margin = 0.45
    ours, theirs = {
        # pytorch-metric-learning states the ArcFace margin in degrees
        "arcface": (ArcFace(D, C, 20.0, margin), lambda: pml_losses.ArcFaceLoss(C, D, math.degrees(margin), 20.0)),
        "cosface": (CosFace(D, C, 20.0, 0.35), lambda: pml_losses.CosFaceLoss(C, D, margin=0.35, scale=20.0)),
        # theirs has no lambda annealing and scales by the feature norm: ours with lambda = 0, scale None
        "sphereface": (SphereFace(D, C, 4, None, lambda_base=0.0, lambda_min=0.0),
                       lambda: pml_losses.SphereFaceLoss(C, D, margin=4, scale=1)),
        "normface": (CosineClassifier(D, C, 16.0), lambda: pml_losses.NormalizedSoftmaxLoss(
            C, D, temperature=1 / 16.0, distance=pml_distances.CosineSimilarity())),
    }[name]
    ours = spread_weights(ours)
    oracle = _pml_classifier(theirs(), ours)
    assert ours(x, y).loss.item() == pytest.approx(oracle(x, y).item(), rel=1e-9)


@pytest.mark.parametrize("distance", ["cosine", "squared_l2"])
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_triplet_matches_pytorch_metric_learning(mining: str, distance: str) -> None:
    x, _ = batch(5, n=16)
    y = torch.arange(16) // 4
    margin = 0.4 if distance == "cosine" else 0.8
    pml_dist = (pml_distances.CosineSimilarity() if distance == "cosine"
                else pml_distances.LpDistance(power=2, normalize_embeddings=True))
    miner = {
        "batch_all": None,
        "batch_hard": pml_miners.BatchHardMiner(distance=pml_dist),
        "semi_hard": pml_miners.TripletMarginMiner(margin, type_of_triplets="semihard", distance=pml_dist),
    }[mining]
    oracle = pml_losses.TripletMarginLoss(margin=margin, distance=pml_dist)
    expected = oracle(x, y, miner(x, y)) if miner else oracle(x, y)
    ours = TripletLoss(D, 4, margin=margin, mining=mining, distance=distance)
    assert ours(x, y).loss.item() == pytest.approx(expected.item(), rel=1e-9)
    if miner is not None:
        theirs = set(zip(*(t.tolist() for t in miner(x, y)), strict=True))
        ours_set = set(zip(*(t.tolist() for t in ours.mine(ours.pairwise(x), y, margin)), strict=True))
        assert ours_set == theirs and ours_set


@pytest.mark.parametrize("distance", ["cosine", "squared_l2"])
def test_contrastive_matches_pytorch_metric_learning(distance: str) -> None:
    x, _ = batch(7, n=12)
    y = torch.arange(12) // 3
    pos_margin, margin = 0.2, 0.9
    if distance == "cosine":  # theirs works on the similarity 1 - d: margins flip to 1 - margin
        oracle = pml_losses.ContrastiveLoss(pos_margin=1 - pos_margin, neg_margin=1 - margin,
                                            distance=pml_distances.CosineSimilarity())
    else:
        oracle = pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=margin,
                                            distance=pml_distances.LpDistance(power=2, normalize_embeddings=True))
    ours = ContrastiveLoss(D, 4, margin=margin, pos_margin=pos_margin, distance=distance)
    assert ours(x, y).loss.item() == pytest.approx(oracle(x, y).item(), rel=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# metric losses vs float64 formulas


@pytest.mark.parametrize("distance", ["cosine", "squared_l2"])
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_triplet_matches_float64_formula(mining: str, distance: str) -> None:
    x, _ = batch(11, n=15)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4])
    margin = 0.5
    dist = ref_distances(x.numpy(), distance)
    triplets = ref_triplets(dist, y.numpy(), mining, margin)
    assert triplets
    expected = ref_mean_nonzero([max(0.0, dist[a, p] - dist[a, n] + margin) for a, p, n in triplets])
    ours = TripletLoss(D, 5, margin=margin, mining=mining, distance=distance)
    assert ours(x, y).loss.item() == pytest.approx(expected, rel=1e-9)
    assert ours.last_triplets == len(triplets)
    plain = TripletLoss(D, 5, margin=margin, mining=mining, distance=distance, reduction="mean")
    mean = np.mean([max(0.0, dist[a, p] - dist[a, n] + margin) for a, p, n in triplets])
    assert plain(x, y).loss.item() == pytest.approx(mean, rel=1e-9)


def test_contrastive_matches_float64_formula() -> None:
    x, _ = batch(12, n=10)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4])
    dist = ref_distances(x.numpy(), "cosine")
    pos, neg = [], []
    for i in range(10):
        for j in range(i + 1, 10):
            (pos if y[i] == y[j] else neg).append(dist[i, j])
    expected = (ref_mean_nonzero([max(0.0, d - 0.1) for d in pos])
                + ref_mean_nonzero([max(0.0, 1.1 - d) for d in neg]))
    ours = ContrastiveLoss(D, 5, margin=1.1, pos_margin=0.1)
    assert ours(x, y).loss.item() == pytest.approx(expected, rel=1e-9)


def test_center_loss_matches_float64_formula() -> None:
    loss = spread_weights(CenterLoss(D, C))
    x, y = batch(4)
    c = loss.centers.detach().numpy()
    expected = 0.5 * np.mean([np.sum((x.numpy()[i] - c[y[i]]) ** 2) for i in range(B)])
    out = loss(x, y)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.logits is None and loss.logits(x) is None


def test_joint_is_the_weighted_sum_with_logits_from_the_first_classifier() -> None:
    x, y = batch(6, n=16)
    y = torch.arange(16) // 4
    joint = JointLoss(D, 4, components=[
        {"name": "triplet", "weight": 0.3, "options": {"mining": "batch_hard"}},
        {"name": "arcface", "weight": 0.7, "options": {"scale": 8.0, "margin": 0.2}},
        {"name": "softmax", "weight": 0.5},
    ]).double()
    triplet, arc, soft = joint.parts
    out = joint(x, y)
    expected = 0.3 * triplet(x, y).loss + 0.7 * arc(x, y).loss + 0.5 * soft(x, y).loss
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(out.logits, arc.logits(x))
    torch.testing.assert_close(joint.logits(x), arc.logits(x))
    assert set(joint.last_terms) == {"0.triplet", "1.arcface", "2.softmax"}


# ----------------------------------------------------------------------------------------------------------------
# gradcheck (float64), with respect to the embeddings and every loss parameter

GRAD_CASES = {
    "softmax": {"label_smoothing": 0.1},
    "normface": {"scale": 4.0},
    "cosface": {"scale": 4.0, "margin": 0.3},
    "arcface": {"scale": 4.0, "margin": 0.5},
    "arcface_fallback": {"scale": 3.0, "margin": 1.4},
    "combined": {"scale": 4.0, "m1": 1.5, "m2": 0.3, "m3": 0.1},
    "sphereface": {"margin": 3, "lambda_base": 1.0, "lambda_min": 1.0},
    "triplet_all": {"mining": "batch_all", "margin": 0.4},
    "triplet_hard": {"mining": "batch_hard", "distance": "squared_l2", "margin": 0.8},
    "triplet_semi": {"mining": "semi_hard", "margin": 0.4},
    "contrastive": {"margin": 1.0, "pos_margin": 0.1},
    "center": {},
}


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_gradcheck_float64(case: str) -> None:
    name = {"arcface_fallback": "arcface"}.get(case, case.split("_")[0])
    loss = spread_weights(build_loss(LossConfig(name, GRAD_CASES[case]), D, 4))
    x, _ = batch(21, n=12)
    y = torch.arange(12) // 3
    names = [n for n, _ in loss.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in loss.parameters()]

    def fn(emb: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(loss, dict(zip(names, ps, strict=True)), (emb, y)).loss

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


# ----------------------------------------------------------------------------------------------------------------
# mining on hand-built batches: 1-D embeddings, squared L2 without normalisation, so distances are (xi - xj)^2

LINE = torch.tensor([[0.0], [1.0], [3.5], [2.0], [10.0]], dtype=torch.float64)
LINE_LABELS = torch.tensor([0, 0, 0, 1, 1])


def _mined(miner, margin: float = 3.5) -> set[tuple[int, int, int]]:
    dist = (LINE - LINE.t()) ** 2
    return set(zip(*(t.tolist() for t in miner(dist, LINE_LABELS, margin)), strict=True))


def test_batch_hard_picks_farthest_positive_and_closest_negative() -> None:
    # anchor 0 at x=0: positives 1 (d=1), 2 (d=12.25) -> 2; negatives 3 (d=4), 4 (d=100) -> 3; and so on
    assert _mined(mine_batch_hard) == {(0, 2, 3), (1, 2, 3), (2, 0, 3), (3, 4, 1), (4, 3, 2)}


def test_semi_hard_keeps_only_negatives_inside_the_margin() -> None:
    # only (0, 1, 3): d_ap = 1 < d_an = 4 < 1 + 3.5. (1, 0, 3) has d_an = d_ap = 1 (not farther), (1, 2, 3) is hard
    assert _mined(mine_semi_hard) == {(0, 1, 3)}
    assert _mined(mine_semi_hard, margin=0.5) == set()


def test_batch_all_lists_every_valid_triplet() -> None:
    mined = _mined(mine_batch_all)
    assert len(mined) == 3 * 2 * 2 + 2 * 1 * 3
    assert all(LINE_LABELS[a] == LINE_LABELS[p] != LINE_LABELS[n] and a != p for a, p, n in mined)


def test_triplet_loss_on_the_line_by_hand() -> None:
    loss = TripletLoss(1, 2, margin=3.5, mining="batch_hard", distance="squared_l2", normalize=False, reduction="mean")
    # batch-hard triplets above: d_ap - d_an + 3.5 = 12.25-4+3.5, 6.25-1+3.5, 12.25-2.25+3.5, 64-1+3.5, 64-42.25+3.5
    terms = [11.75, 8.75, 13.5, 66.5, 25.25]
    assert loss(LINE, LINE_LABELS).loss.item() == pytest.approx(sum(terms) / 5)


# ----------------------------------------------------------------------------------------------------------------
# degenerate batches give a clear, finite result that still backpropagates


@pytest.mark.parametrize("labels", [[3] * 8, list(range(8))], ids=["one_identity", "all_singletons"])
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_triplet_without_valid_triplet_is_exact_zero(labels: list[int], mining: str) -> None:
    x = torch.randn(8, D, requires_grad=True)
    loss = TripletLoss(D, 8, mining=mining)
    out = loss(x, torch.tensor(labels))
    assert out.loss.item() == 0.0 and loss.last_triplets == 0
    out.loss.backward()
    assert x.grad is not None and torch.all(x.grad == 0)


def test_contrastive_degenerate_batches() -> None:
    x = torch.randn(6, D, dtype=torch.float64, requires_grad=True)
    loss = ContrastiveLoss(D, 6, margin=2.5, pos_margin=0.0)  # margin > max cosine distance: every negative counts
    d = ref_distances(x.detach().numpy(), "cosine")
    upper = np.triu_indices(6, 1)
    only_pos = loss(x, torch.zeros(6, dtype=torch.long)).loss
    only_neg = loss(x, torch.arange(6)).loss
    assert only_pos.item() == pytest.approx(d[upper].mean(), rel=1e-9)
    assert only_neg.item() == pytest.approx((2.5 - d[upper]).mean(), rel=1e-9)
    single = loss(x[:1], torch.tensor([0])).loss
    assert single.item() == 0.0
    single.backward()
    assert torch.all(x.grad == 0)


def test_joint_with_a_degenerate_metric_term_still_trains_the_classifier() -> None:
    joint = build_loss(LossConfig("joint", {"components": [{"name": "softmax", "weight": 0.7},
                                                           {"name": "triplet", "weight": 0.3}]}), D, 4)
    x = torch.randn(5, D, requires_grad=True)
    out = joint(x, torch.zeros(5, dtype=torch.long))
    out.loss.backward()
    assert torch.isfinite(out.loss) and joint.last_terms["1.triplet"] == 0.0
    assert x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# SphereFace lambda annealing: step counted in forward while training, saved in the state dict


def test_sphereface_lambda_schedule_counts_training_steps_and_resumes() -> None:
    loss = SphereFace(D, C, margin=4, lambda_base=1000.0, lambda_gamma=0.5, lambda_power=1.0, lambda_min=5.0)
    x, y = batch()
    x = x.float()
    assert loss.annealing_lambda() == 1000.0
    for _ in range(3):
        loss(x, y)
    assert int(loss.step) == 3
    assert loss.annealing_lambda() == pytest.approx(1000.0 / (1 + 0.5 * 3))
    loss.eval()
    loss(x, y)
    assert int(loss.step) == 3  # evaluation does not advance the schedule
    resumed = SphereFace(D, C, margin=4, lambda_base=1000.0, lambda_gamma=0.5, lambda_power=1.0, lambda_min=5.0)
    resumed.load_state_dict(loss.state_dict())
    assert int(resumed.step) == 3 and resumed.annealing_lambda() == loss.annealing_lambda()
    resumed.step.fill_(10**6)
    assert resumed.annealing_lambda() == 5.0


def test_sphereface_early_lambda_is_almost_plain_softmax() -> None:
    x, y = batch()
    early = spread_weights(SphereFace(D, C, margin=4, lambda_base=1e9, lambda_min=1e9))
    plain = spread_weights(CosineClassifier(D, C, scale=1.0))
    norms = np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    expected = ref_ce(norms * ref_cos(x.numpy(), plain.weight.detach().numpy()), y.numpy())
    assert early(x, y).loss.item() == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# precision, labels, optimizer groups


@pytest.mark.parametrize("name", ["softmax", "normface", "arcface", "sphereface", "triplet", "center"])
def test_losses_compute_in_float32_under_autocast(name: str) -> None:
    torch.manual_seed(0)
    loss = build_loss(LossConfig(name), 16, 4).eval()  # eval: sphereface's lambda stays put between the calls
    layer = torch.nn.Linear(8, 16)
    inputs, y = torch.randn(16, 8), torch.arange(16) // 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = layer(inputs)
        out = loss(emb, y.to(torch.int32))  # int labels are cast to long inside
    assert emb.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    if out.logits is not None:
        assert out.logits.dtype == torch.float32
    assert out.loss.item() == pytest.approx(loss(emb.float(), y).loss.item(), rel=1e-6)


def test_class_weights_and_centres_get_their_own_optimizer_groups() -> None:
    backbone = torch.nn.Linear(3, D)
    cfg = OptimConfig(lr=0.1, weight_decay=5e-4)
    groups = param_groups(backbone, build_loss(LossConfig("arcface"), D, C), cfg)
    assert [g["name"] for g in groups] == ["backbone", "class_weights"]
    joint = build_loss(LossConfig("joint", {"components": [
        {"name": "softmax"}, {"name": "center", "weight": 0.1, "options": {"center_lr": 0.5}}]}), D, C)
    groups = param_groups(backbone, joint, cfg)
    assert [g["name"] for g in groups] == ["backbone", "0.softmax.class_weights", "1.center.centers"]
    opt = build_optimizer(backbone, joint, cfg)
    centres = opt.param_groups[2]
    assert centres["params"][0] is joint.parts[1].centers
    assert centres["lr"] == 0.5 and centres["weight_decay"] == 0.0 and opt.param_groups[1]["lr"] == 0.1
    build_scheduler(opt, OptimConfig(lr=0.1, epochs=2, warmup_epochs=1), steps_per_epoch=4)
    assert centres["lr"] == pytest.approx(0.5 / 4)  # the schedule multiplies the centres' own rate
    assert build_loss(LossConfig("center"), D, C).optimizer_groups(cfg)[0]["lr"] == 0.1  # default: base lr


# ----------------------------------------------------------------------------------------------------------------
# invalid options: one-line FacelabError naming the option

BAD_OPTIONS = [
    ("sphereface", {"margin": 2.5}, "loss.options.margin"),
    ("sphereface", {"margin": 0}, "loss.options.margin"),
    ("sphereface", {"lambda_min": -1.0}, "loss.options.lambda_min"),
    ("arcface", {"margin": -0.1}, "loss.options.margin"),
    ("arcface", {"margin": 30.0}, "radians"),
    ("cosface", {"margin": -0.2}, "loss.options.margin"),
    ("combined", {"m1": 0.5}, "loss.options.m1"),
    ("combined", {"m2": -0.1}, "loss.options.m2"),
    ("combined", {"m3": -0.1}, "loss.options.m3"),
    ("normface", {"scale": 0}, "loss.options.scale"),
    ("softmax", {"label_smoothing": 1.0}, "loss.options.label_smoothing"),
    ("triplet", {"mining": "hardest"}, "loss.options.mining"),
    ("triplet", {"distance": "l1"}, "loss.options.distance"),
    ("triplet", {"margin": -0.1}, "loss.options.margin"),
    ("triplet", {"reduction": "sum"}, "loss.options.reduction"),
    ("contrastive", {"margin": 0.1, "pos_margin": 0.2}, "loss.options.margin"),
    ("center", {"center_lr": -1.0}, "loss.options.center_lr"),
    ("joint", {"components": []}, "loss.options.components"),
    ("joint", {"components": [{"name": "softmax", "wieght": 1}]}, "components[0]"),
    ("joint", {"components": [{"name": "softmax", "weight": -1}]}, "components[0].weight"),
    ("joint", {"components": [{"name": "softmx"}]}, "did you mean 'softmax'"),
    ("arcface", {"margn": 0.3}, "margn"),
]


@pytest.mark.parametrize(("name", "options", "expected"), BAD_OPTIONS)
def test_invalid_options_raise_one_line_facelab_error(name: str, options: dict, expected: str) -> None:
    with pytest.raises(FacelabError) as info:
        build_loss(LossConfig(name, options), D, C)
    assert expected in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# recipes


ZOO = {"softmax", "normface", "sphereface", "cosface", "arcface", "combined", "center", "contrastive", "triplet",
       "joint"}


def test_every_loss_of_the_zoo_is_registered_and_has_a_recipe_that_builds() -> None:
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert {r.stem for r in recipes} == ZOO and set(LOSSES.names()) >= ZOO
    base = load_yaml(demo_config_path())
    base.pop("loss")
    for recipe in recipes:
        cfg = load_config(recipe, base=base)
        loss = build_loss(cfg.loss, cfg.model.embedding_dim, 30)
        assert isinstance(loss, FaceLoss)
        names = {cfg.loss.name} | {c["name"] for c in cfg.loss.options.get("components", [])}
        assert recipe.stem in names
        if names & {"triplet", "contrastive"}:
            assert cfg.data.sampler == "pk", f"{recipe.name}: pair/triplet losses need P x K batches"


# ----------------------------------------------------------------------------------------------------------------
# end to end (slow): metric loss through train + eval, SphereFace schedule across a resume


def _tiny_config(root: Path, out: Path, recipe: str, epochs: int):
    base = load_yaml(demo_config_path())
    base.pop("loss")
    return load_config(RECIPES / f"{recipe}.yaml", [
        f"data.root={root}", f"out_dir={out}", f"optim.epochs={epochs}", "data.input_size=32", "model.width=8",
        "model.embedding_dim=32", "data.split.open_identities=2", "data.batch_size=16", "threads=1",
        "eval.flip_tta=false", "optim.warmup_epochs=0"], base=base)


@pytest.mark.slow
def test_triplet_recipe_trains_and_evaluates_by_nearest_centre(small_faces: Path, tmp_path: Path) -> None:
    from facelab.engine import train
    from facelab.evaluation.protocol import evaluate

    cfg = _tiny_config(small_faces, tmp_path / "run", "triplet", epochs=2)
    result = train(cfg, quiet=True)
    assert all(np.isfinite(h["loss"]) and h["train_acc"] is None for h in result.history)
    metrics = evaluate(result.out_dir, quiet=True)
    assert 0.0 <= metrics["closed_set"]["top1"] <= 1.0 and "open_set" in metrics


@pytest.mark.slow
def test_sphereface_schedule_survives_resume(small_faces: Path, tmp_path: Path) -> None:
    from facelab.engine import train
    from facelab.runs import load_checkpoint

    cfg = _tiny_config(small_faces, tmp_path / "run", "sphereface", epochs=2)
    train(cfg, quiet=True, stop_after_epochs=1)
    first = int(load_checkpoint(tmp_path / "run")["loss"]["step"])
    train(cfg, resume=True, quiet=True)
    state = load_checkpoint(tmp_path / "run")
    assert first > 0 and int(state["loss"]["step"]) == 2 * first


# ----------------------------------------------------------------------------------------------------------------
# what a batch must hold (batch_needs), what it offered (terms), auto scale, margin warm-up


def _needs(name: str, options: dict | None = None) -> tuple[int, int]:
    needs = build_loss(LossConfig(name, options or {}), D, C).needs()
    return needs.identities, needs.images_per_identity


def test_losses_declare_what_a_batch_must_hold_and_joint_combines_them() -> None:
    for name in ("softmax", "normface", "arcface", "cosface", "combined", "sphereface", "partial_fc"):
        assert _needs(name) == (1, 1), name
    assert _needs("triplet") == _needs("contrastive") == (2, 2)
    assert _needs("center") == (1, 2)
    joint = {"components": [{"name": "softmax"}, {"name": "center", "weight": 0.1}]}
    assert _needs("joint", joint) == (1, 2)
    joint["components"].append({"name": "triplet"})
    assert _needs("joint", joint) == (2, 2)
    assert not build_loss(LossConfig("arcface"), D, C).needs().grouped
    assert build_loss(LossConfig("triplet"), D, C).needs().grouped


def test_short_identities_lists_those_below_k() -> None:
    from facelab.losses import BatchNeeds

    labels = [0, 0, 1, 2, 2, 2, 3]
    assert BatchNeeds(2, 2).short_identities(labels) == {1: 1, 3: 1}
    assert BatchNeeds(2, 3).short_identities(labels) == {0: 2, 1: 1, 3: 1}
    assert BatchNeeds().short_identities(labels) == {}


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_metric_losses_report_the_terms_a_batch_offers(mining: str) -> None:
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    x = torch.randn(7, D, dtype=torch.float64)
    labels = y.tolist()
    # by hand: anchors with another image of their identity (a positive) and an image of another (a negative)
    anchors = sum(1 for i, a in enumerate(labels) if labels.count(a) > 1 and len(set(labels)) > 1)
    positive_pairs = sum(labels.count(a) * (labels.count(a) - 1) // 2 for a in set(labels))
    assert anchors == 5 and positive_pairs == 4
    assert TripletLoss(D, 4, mining=mining)(x, y).terms == anchors
    assert ContrastiveLoss(D, 4)(x, y).terms == positive_pairs
    assert TripletLoss(D, 8, mining=mining)(x, torch.arange(7)).terms == 0
    assert ContrastiveLoss(D, 8)(x, torch.arange(7)).terms == 0
    assert ArcFace(D, 4)(x.float(), y).terms is None
    joint = build_loss(LossConfig("joint", {"components": [{"name": "softmax"}, {"name": "triplet"}]}), D, 4)
    assert joint(x.float(), y).terms == anchors


def test_auto_scale_is_adacos_fixed_scale() -> None:
    from facelab.losses import auto_scale
    from facelab.losses.classification import MIN_AUTO_SCALE

    for classes in (30, 38, 1000, 85742):
        assert auto_scale(classes) == pytest.approx(math.sqrt(2.0) * math.log(classes - 1), rel=1e-12)
    assert auto_scale(2) == auto_scale(3) == MIN_AUTO_SCALE  # the formula gives 0 and 0.98 there
    assert ArcFace(D, 30).scale == pytest.approx(math.sqrt(2.0) * math.log(29))  # "auto" is the default
    assert CosFace(D, 1000, scale="auto").scale == auto_scale(1000)
    assert ArcFace(D, 30, scale=16).scale == 16.0
    pfc = build_loss(LossConfig("partial_fc", {"scale": "auto"}), D, 500)
    assert pfc.head.scale == auto_scale(500)  # from all the classes, not a shard's
    with pytest.raises(FacelabError, match=r"loss.options.scale must be a positive number or 'auto', got 'big'"):
        ArcFace(D, 30, scale="big")


@pytest.mark.parametrize("name", ["arcface", "cosface", "combined"])
def test_margin_warmup_ramps_every_margin_linearly(name: str) -> None:
    """At progress p of a w-epoch warm-up the loss equals the float64 formula with margins scaled by p / w (m1 from 1
    towards its value); outside training (no progress set) the full margin applies."""
    full = {"arcface": {"margin": 0.5}, "cosface": {"margin": 0.35}, "combined": {"m1": 1.3, "m2": 0.4, "m3": 0.15}}
    targets = {"arcface": lambda r: ref_arcface_target(0.5 * r), "cosface": lambda r: (lambda c: c - 0.35 * r),
               "combined": lambda r: ref_combined_target(1 + 0.3 * r, 0.4 * r, 0.15 * r)}
    loss = spread_weights(build_loss(LossConfig(name, {"scale": 10.0, "margin_warmup": 4, **full[name]}), D, C))
    x, y = batch()
    w = loss.weight.detach().numpy()
    for progress, ramp in ((None, 1.0), (0.0, 0.0), (1.0, 0.25), (3.0, 0.75), (4.0, 1.0), (9.5, 1.0)):
        if progress is not None:
            loss.set_progress(progress)
        expected = ref_margin_loss(x.numpy(), w, y.numpy(), targets[name](ramp), 10.0)
        assert loss(x, y).loss.item() == pytest.approx(expected, rel=1e-9), (progress, ramp)


def test_set_progress_reaches_every_loss_inside_a_joint_loss() -> None:
    joint = build_loss(LossConfig("joint", {"components": [
        {"name": "arcface", "options": {"margin_warmup": 2}}, {"name": "triplet"}]}), D, C)
    joint.set_progress(1.0)
    assert [p.progress for p in joint.parts] == [1.0, 1.0] and joint.parts[0].margin_ramp() == 0.5
    with pytest.raises(FacelabError, match=r"loss\.options\.margin_warmup is a number of epochs and must be >= 0"):
        build_loss(LossConfig("arcface", {"margin_warmup": -1}), D, C)
