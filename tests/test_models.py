"""Backbones: costs against torch's FLOP counter and torchvision, forward + backward at two input sizes with every
norm, DropBlock only in training, the demo architecture unchanged, and ``facelab models``."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from facelab.cli import main
from facelab.config import ModelConfig
from facelab.errors import FacelabError
from facelab.models import BACKBONES, Backbone, build_backbone, count_parameters
from facelab.models.summary import backbone_cost, count_macs

NAMES = BACKBONES.names()
NORMS = ["batch", "layer", "group", "instance", "none"]
#: small widths keep the whole matrix of backbones x norms x sizes to a few seconds per backbone
WIDTH = {"resnet50": 4, "resnet100": 4, "resnet101": 4, "resnet152": 4, "vgg16": 8, "vgg19": 8, "alexnet": 8}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small(name: str, input_size: int = 64, embedding_dim: int = 16, **options: object) -> Backbone:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=name, embedding_dim=embedding_dim, width=WIDTH.get(name, 8), options=options)
    return build_backbone(cfg, input_size)


def test_every_seed_backbone_is_registered() -> None:
    expected = {"lenet5", "alexnet", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "resnet100", "resnet101",
                "resnet152", "inception", "inception_aux", "nin", "mobilenet_v1", "mobilenet_v2", "mobilefacenet"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_macs_match_torch_flop_counter(name: str) -> None:
    """Hooks on Conv2d/Linear count what FlopCounterMode counts (FLOPs = 2 x MACs), for every backbone."""
    model = small(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert 2 * count_macs(model, 64) == counter.get_total_flops()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_forward_backward_two_sizes_every_norm(name: str, norm: str) -> None:
    for size in (64, 112):
        model = small(name, size, norm=norm).train()
        emb = model(torch.randn(2, 3, size, size))
        assert emb.shape == (2, 16) and torch.isfinite(emb).all()
        aux = model.take_auxiliary()  # auxiliary heads (inception_aux) learn through their own loss terms
        assert len(aux) == (2 if name == "inception_aux" else 0)
        (emb.square().sum() + sum(a.square().sum() for a in aux)).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"{name}/{norm}@{size}: no gradient for {missing[:3]}"


@pytest.mark.parametrize("name", NAMES)
def test_odd_input_size_and_embedding_dim(name: str) -> None:
    model = small(name, 97, embedding_dim=24).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 97, 97)).shape == (2, 24)


@pytest.mark.parametrize("name", NAMES)
def test_smallest_accepted_input_runs(name: str) -> None:
    side = type(small(name)).min_input_size
    assert side <= 64
    model = small(name, side).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, side, side)).shape == (2, 16)


@pytest.mark.parametrize("name", ["alexnet", "inception", "inception_aux", "nin", "mobilenet_v1", "mobilenet_v2"])
def test_too_small_input_is_a_one_line_error(name: str) -> None:
    with pytest.raises(FacelabError, match=r"needs input_size >= 64, got 48"):
        small(name, 48)


def test_bad_options_are_facelab_errors() -> None:
    with pytest.raises(FacelabError, match="unknown norm"):
        small("vgg16", norm="batchnorm")
    with pytest.raises(FacelabError, match="unknown residual block"):
        small("resnet18", block="dense")
    with pytest.raises(FacelabError, match=r"bad model\.options"):
        small("lenet5", depth=3)
    with pytest.raises(FacelabError, match="drop_block"):
        small("resnet18", drop_block=1.5)
    with pytest.raises(FacelabError, match="drop_block_size must be odd"):
        small("resnet18", drop_block=0.1, drop_block_size=4)
    with pytest.raises(FacelabError, match="unknown embedding head"):
        small("mobilenet_v1", head="avg")


def test_drop_block_active_only_in_training() -> None:
    x = torch.randn(4, 3, 64, 64)
    plain, dropped = small("resnet18", head="gap"), small("resnet18", head="gap", drop_block=0.3)
    plain.eval(), dropped.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), dropped(x))  # same seed, same weights; eval: DropBlock is the identity
        plain.train(), dropped.train()
        assert torch.equal(plain(x), plain(x))
        torch.manual_seed(1)
        assert not torch.equal(dropped(x), dropped(x))


def test_resnet_blocks_option() -> None:
    basic, bottleneck = small("resnet18", block="basic"), small("resnet18", block="bottleneck")
    assert basic.feature_shape(64) == (64, 4)
    assert bottleneck.feature_shape(64) == (256, 4)  # 4x expansion


def test_demo_architecture_is_unchanged() -> None:
    """Pinned counts of the demo (resnet18, width 32, 128-d at 64x64) and MobileFaceNet as first shipped."""
    demo = build_backbone(ModelConfig(backbone="resnet18", width=32, embedding_dim=128), 64)
    assert count_parameters(demo) == 3_323_776
    mfn = build_backbone(ModelConfig(backbone="mobilefacenet", width=64, embedding_dim=128), 112)
    assert count_parameters(mfn) == 1_003_136
    assert 220e6 < count_macs(mfn, 112) < 222e6  # the paper's 221M MAdds


def test_meta_device_costs_equal_real_ones() -> None:
    real = small("mobilenet_v2", 112)
    meta = backbone_cost("mobilenet_v2", 112, 16, WIDTH.get("mobilenet_v2", 8))
    assert (meta.params, meta.macs) == (count_parameters(real), count_macs(real, 112))


def _conv_weights(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_feature_stacks_match_torchvision_where_the_architecture_is_the_same() -> None:
    """MobileNet v2 features (with batch norm) are parameter-identical to torchvision's; VGG-16's convolution
    weights equal torchvision's (which adds biases and no norm)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        ours = build_backbone(ModelConfig(backbone="mobilenet_v2", width=64), 112)
        theirs = torchvision.models.mobilenet_v2(weights=None)
        vgg = build_backbone(ModelConfig(backbone="vgg16", width=64, options={"norm": "none"}), 64)
        vgg_tv = torchvision.models.vgg16(weights=None)
    assert count_parameters(ours.features) == count_parameters(theirs.features)
    assert _conv_weights(vgg.features) == _conv_weights(vgg_tv.features)


def test_cli_models_lists_every_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--input-size", "64", "--embedding-dim", "64", "--width", "16"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)
    assert "64x64" in out and "embedding 64" in out


def test_cli_models_conv_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--conv", "in=3", "out=256", "k=5", "hw=8"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[-2:] for line in out.splitlines()[2:6]}
    assert rows == {"standard": ["19200", str(19200 * 64)], "depthwise": ["75", str(75 * 64)],
                    "pointwise": ["768", str(768 * 64)], "depthwise-separable": ["843", str(843 * 64)]}
    assert main(["models", "--conv", "in=3", "k=5"]) == 2
    assert "missing out=N, hw=N" in capsys.readouterr().err


def test_new_deep_networks_match_torchvision_stage_for_stage() -> None:
    """VGG-19's convolution weights equal torchvision's vgg19; resnet101/152 with ``block: bottleneck`` have exactly
    the convolution weights of torchvision's resnet101/152 residual stages (layer1-layer4, projections included)."""
    with torch.device("meta"):
        vgg = build_backbone(ModelConfig(backbone="vgg19", width=64, options={"norm": "none"}), 64)
        assert _conv_weights(vgg.features) == _conv_weights(torchvision.models.vgg19(weights=None).features)
        for depth in (101, 152):
            ours = build_backbone(ModelConfig(backbone=f"resnet{depth}", width=64,
                                              options={"block": "bottleneck"}), 64)
            theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
            stages = torch.nn.ModuleList([theirs.layer1, theirs.layer2, theirs.layer3, theirs.layer4])
            assert _conv_weights(ours.features[1:]) == _conv_weights(stages)
            assert len(ours.features) - 1 == sum(len(s) for s in stages)


def test_nin_parameters_match_the_mlpconv_formula() -> None:
    """Each mlpconv layer holds M*N*K^2 + 2*N^2 convolution weights (one K x K conv, two 1x1 convs; Lin et al.)."""
    with torch.device("meta"):
        nin = build_backbone(ModelConfig(backbone="nin", width=64, options={"norm": "none"}), 112)
    expected, cin = 0, 3
    for cout, k in ((96, 11), (256, 5), (384, 3), (1024, 3)):
        expected += cin * cout * k * k + 2 * cout * cout
        cin = cout
    assert _conv_weights(nin.features) == expected
    assert nin.feature_map == (1024, 3)  # 112 -> 28 (11x11/4) -> 14 -> 7 -> 3 (3x3/2 pools, ceil)
