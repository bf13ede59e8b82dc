"""Every building block's parameter count against its closed-form formula (batch norm: 2C, PReLU: C)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from facelab.errors import FacelabError
from facelab.models import count_parameters
from facelab.models.blocks import (
    RESIDUAL_BLOCKS,
    BasicBlock,
    Bottleneck,
    ConvNormAct,
    DepthwiseConv,
    DepthwiseSeparable,
    DropBlock,
    GDCEmbedding,
    InceptionModule,
    InvertedResidual,
    IRBlock,
    MLPConv,
    PointwiseConv,
    make_drop_block,
    norm_factory,
)
from facelab.models.blocks.heads import FlattenEmbedding, MLPEmbedding, PoolEmbedding
from facelab.models.summary import compare_conv, count_macs, parse_conv_spec

BN = norm_factory("batch")
NONE = norm_factory("none")


@pytest.mark.parametrize(("cin", "cout", "k"), [(3, 16, 3), (8, 8, 5), (16, 4, 1)])
def test_conv_norm_act(cin: int, cout: int, k: int) -> None:
    assert count_parameters(ConvNormAct(cin, cout, k, norm=BN)) == cin * cout * k * k + 2 * cout + cout
    assert count_parameters(ConvNormAct(cin, cout, k, norm=NONE, act=None)) == cin * cout * k * k


def test_depthwise_and_pointwise() -> None:
    c, k = 24, 5
    assert count_parameters(DepthwiseConv(c, k, norm=NONE, act=None)) == c * k * k
    assert count_parameters(DepthwiseConv(c, k, norm=BN, act=nn.ReLU)) == c * k * k + 2 * c
    assert count_parameters(PointwiseConv(c, 40, norm=NONE, act=None)) == c * 40
    assert count_parameters(PointwiseConv(c, 40, norm=BN)) == c * 40 + 3 * 40


CONV_CASES = [(3, 256, 5, 8, 1), (32, 64, 3, 14, 1), (128, 128, 7, 4, 1), (32, 64, 3, 15, 2), (16, 8, 5, 9, 3)]


@pytest.mark.parametrize(("m", "n", "k", "hw", "s"), CONV_CASES)
def test_conv_rows_match_float64_formulas(m: int, n: int, k: int, hw: int, s: int) -> None:
    """Weights N*M*K^2, M*K^2, N*M, M*K^2 + N*M and MACs = weights x output positions, the output side
    floor((hw + 2*floor(K/2) - K) / s) + 1, all evaluated here in float64."""
    c = compare_conv(m, n, k, hw, s)
    M, N, K, H, S = (np.float64(v) for v in (m, n, k, hw, s))
    side = np.floor((H + 2 * np.floor(K / 2) - K) / S) + 1
    expected = {"standard": N * M * K * K, "depthwise": M * K * K, "pointwise": N * M,
                "depthwise-separable": M * K * K + N * M}
    assert [r.name for r in c.rows] == list(expected)
    for r in c.rows:
        assert r.params == r.formula_params == expected[r.name]
        assert r.macs == expected[r.name] * side * side
        assert r.formula.endswith(f"= {int(expected[r.name])}")
    assert c.out_hw == side
    assert count_parameters(DepthwiseSeparable(m, n, k, norm=BN)) == m * k * k + n * m + 2 * m + 2 * n


@pytest.mark.parametrize(("m", "n", "k", "hw", "s"), CONV_CASES)
def test_conv_rows_match_a_real_conv2d(m: int, n: int, k: int, hw: int, s: int) -> None:
    """Each row equals what plain ``nn.Conv2d`` layers hold and what torch's FLOP counter counts (FLOPs / 2)."""
    convs = {"standard": [nn.Conv2d(m, n, k, s, k // 2, bias=False)],
             "depthwise": [nn.Conv2d(m, m, k, s, k // 2, groups=m, bias=False)],
             "pointwise": [nn.Conv2d(m, n, 1, bias=False)]}
    convs["depthwise-separable"] = [convs["depthwise"][0], convs["pointwise"][0]]
    c = compare_conv(m, n, k, hw, s)
    for r in c.rows:
        layers = nn.Sequential(*convs[r.name])
        side = c.out_hw if r.name == "pointwise" else hw
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            layers(torch.zeros(1, layers[0].in_channels, side, side))
        assert r.params == sum(p.numel() for p in layers.parameters())
        assert 2 * r.macs == counter.get_total_flops()


def test_conv_spec_parsing() -> None:
    assert parse_conv_spec(["in=3", "out=8", "k=3", "hw=7", "s=2"]) == {"cin": 3, "cout": 8, "kernel": 3, "hw": 7,
                                                                        "stride": 2}
    with pytest.raises(FacelabError, match="missing k=N"):
        parse_conv_spec(["in=3", "out=8", "hw=7"])
    with pytest.raises(FacelabError, match="positive integers, got 's=0'"):
        parse_conv_spec(["in=3", "out=8", "k=3", "hw=7", "s=0"])
    with pytest.raises(FacelabError, match="odd kernel"):
        compare_conv(3, 8, 4, 7)


@pytest.mark.parametrize(("cin", "cout", "stride", "t"), [(16, 16, 1, 2), (16, 24, 2, 6), (8, 8, 1, 1)])
def test_inverted_residual(cin: int, cout: int, stride: int, t: int) -> None:
    h = cin * t
    expand = cin * h + 3 * h if t != 1 else 0
    block = InvertedResidual(cin, cout, stride, t, norm=BN)
    assert count_parameters(block) == expand + 9 * h + 3 * h + h * cout + 2 * cout
    x = torch.randn(2, cin, 8, 8)
    assert block(x).shape == (2, cout, 8 // stride, 8 // stride)
    assert block.use_residual == (stride == 1 and cin == cout)


def _shortcut(cin: int, cout: int, stride: int) -> int:
    return 0 if stride == 1 and cin == cout else cin * cout + 2 * cout


@pytest.mark.parametrize(("cin", "p", "stride"), [(16, 16, 1), (16, 32, 2)])
def test_residual_blocks(cin: int, p: int, stride: int) -> None:
    assert count_parameters(BasicBlock(cin, p, stride, BN)) == 9 * cin * p + 9 * p * p + 4 * p + _shortcut(
        cin, p, stride)
    assert count_parameters(Bottleneck(cin, p, stride, BN)) == (
        cin * p + 9 * p * p + p * 4 * p + 2 * p + 2 * p + 8 * p + _shortcut(cin, 4 * p, stride))
    # IR: BN(cin) conv BN PReLU conv BN
    assert count_parameters(IRBlock(cin, p, stride, BN)) == (
        2 * cin + 9 * cin * p + 2 * p + p + 9 * p * p + 2 * p + _shortcut(cin, p, stride))
    x = torch.randn(2, cin, 8, 8)
    for name in RESIDUAL_BLOCKS.names():
        block = RESIDUAL_BLOCKS.build(name, cin=cin, planes=p, stride=stride, norm=BN)
        assert block(x).shape == (2, p * block.expansion, 8 // stride, 8 // stride)


def test_inception_naive_and_reduced() -> None:
    cin, n1, r3, n3, r5, n5, pp = 192, 64, 96, 128, 16, 32, 32  # GoogLeNet 3a
    reduced = InceptionModule(cin, n1, r3, n3, r5, n5, pp, norm=NONE)
    naive = InceptionModule(cin, n1, r3, n3, r5, n5, pp, norm=NONE, naive=True)
    assert count_parameters(reduced) == cin * n1 + cin * r3 + 9 * r3 * n3 + cin * r5 + 25 * r5 * n5 + cin * pp
    assert count_parameters(naive) == cin * n1 + 9 * cin * n3 + 25 * cin * n5
    assert count_parameters(naive) > 2 * count_parameters(reduced)
    x = torch.randn(2, cin, 8, 8)
    assert reduced(x).shape == (2, reduced.out_channels, 8, 8) and reduced.out_channels == 256
    assert naive(x).shape == (2, cin + n1 + n3 + n5, 8, 8)
    hw = 8
    assert count_macs(naive, hw, cin) == count_parameters(naive) * hw * hw


def test_mlpconv() -> None:
    block = MLPConv(16, 32, 3, norm=NONE)
    assert count_parameters(block) == 16 * 32 * 9 + 2 * 32 * 32
    assert block(torch.randn(2, 16, 6, 6)).shape == (2, 32, 6, 6)


def test_heads() -> None:
    c, s, d = 32, 4, 16
    assert count_parameters(GDCEmbedding(c, s, d, BN)) == c * s * s + 2 * c + c * d + 2 * d
    assert count_parameters(PoolEmbedding(c, d)) == c * d + d + 2 * d
    assert count_parameters(FlattenEmbedding(c, s, d, BN)) == 2 * c + c * s * s * d + d + 2 * d
    h = 64
    assert count_parameters(MLPEmbedding(c, s, d, hidden=(h, h))) == (c * s * s + 1) * h + (h + 1) * h + (
        h + 1) * d + 2 * d


@pytest.mark.parametrize("name", ["batch", "group", "layer", "instance", "none"])
def test_norms_keep_shape_even_on_1x1(name: str) -> None:
    norm = norm_factory(name)(24).train()
    for side in (1, 5):
        x = torch.randn(3, 24, side, side)
        assert norm(x).shape == x.shape


def test_unknown_norm_is_a_one_line_error() -> None:
    with pytest.raises(FacelabError, match=r"unknown norm 'btach'.*did you mean 'batch'"):
        norm_factory("btach")


def test_dropblock_only_in_training() -> None:
    torch.manual_seed(0)
    block = DropBlock(0.3, 3)
    x = torch.ones(4, 8, 9, 9)
    block.train()
    y = block(x)
    assert (y == 0).any() and not torch.equal(y, x)
    assert torch.allclose(y.mean(), x.mean(), rtol=0.2)  # rescaled to keep the expected activation
    block.eval()
    assert torch.equal(block(x), x)
    block.train()
    assert block(torch.ones(2, 4, 2, 2)).shape == (2, 4, 2, 2)  # block clamped to the 2x2 map, no error
    assert isinstance(make_drop_block(0.0), nn.Identity)
