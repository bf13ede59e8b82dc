"""Inception's auxiliary classifiers: produced only in training, added to the training loss with their weight, and
gone from what is deployed (inference form, run -> bundle)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import facelab
from facelab.config import ModelConfig, load_config
from facelab.engine.trainer import _Run
from facelab.errors import FacelabError
from facelab.models import build_backbone, build_from_architecture, count_parameters, inference_form
from facelab.models.summary import count_macs
from facelab.utils.distributed import DistContext

TINY = ["data.input_size=64", "data.batch_size=4", "data.cache_images=true", "model.width=8",
        "model.embedding_dim=32", "loss.options.scale=16", "optim.epochs=1", "threads=1",
        "data.split.open_identities=2"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def aux_model(weight: float = 0.3, size: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(ModelConfig(backbone="inception_aux", width=8, embedding_dim=16,
                                      options={"aux_weight": weight}), size)


def test_auxiliary_embeddings_only_in_training_and_handed_over_once() -> None:
    model = aux_model().train()
    x = torch.randn(2, 3, 64, 64)
    model(x)
    aux = model.take_auxiliary()
    assert [a.shape for a in aux] == [(2, 16), (2, 16)]
    assert model.take_auxiliary() == []
    model.eval()
    with torch.no_grad():
        model(x)
    assert model.take_auxiliary() == []


def test_aux_weight_zero_is_the_plain_inception() -> None:
    plain = build_backbone(ModelConfig(backbone="inception", width=8, embedding_dim=16), 64)
    assert count_parameters(aux_model(0.0)) == count_parameters(plain)
    assert count_parameters(aux_model(0.3)) > count_parameters(plain)
    assert count_macs(aux_model(0.3), 64) == count_macs(plain, 64)  # heads do not run at inference
    with pytest.raises(FacelabError, match="aux_weight must be >= 0"):
        aux_model(-1.0)


def test_inference_form_drops_the_heads_and_keeps_the_embeddings() -> None:
    model = aux_model().eval()
    arch = {"backbone": "inception_aux", "embedding_dim": 16, "width": 8, "dropout": 0.0,
            "options": {"aux_weight": 0.3}}
    plain, plain_arch = inference_form(model, arch)
    assert plain is not model and model.aux_heads is not None  # the training model is left alone
    assert plain_arch["backbone"] == "inception" and "aux_weight" not in plain_arch["options"]
    state = plain.state_dict()
    assert not [k for k in state if k.startswith("aux_heads")]
    rebuilt = build_from_architecture(plain_arch, 64)
    rebuilt.load_state_dict(state)  # strict: the deployed architecture takes exactly these weights
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model(x))
    other = build_backbone(ModelConfig(backbone="resnet18", width=8, embedding_dim=16), 64)
    assert inference_form(other, arch) == (other, arch)


def test_trainer_adds_weighted_auxiliary_losses(small_faces: Path, tmp_path: Path) -> None:
    """The step's loss equals main loss + aux_weight x (loss of each auxiliary embedding), computed here
    independently in float64 from the same backbone and loss; the heads get gradients."""
    cfg = load_config(None, [*TINY, f"data.root={small_faces}", f"out_dir={tmp_path / 'run'}",
                             "model.backbone=inception_aux", "model.options.aux_weight=0.5"])
    run = _Run(cfg, DistContext(), False, True)
    run.backbone.double().train()
    run.loss_fn.double()
    for m in run.backbone.modules():  # dropout off, BatchNorm on batch statistics: a deterministic forward
        if isinstance(m, torch.nn.Dropout | torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        emb = run.backbone(images)
        aux = run.backbone.take_auxiliary()
        main_loss = run.loss_fn(emb, labels).loss.item()
        expected = main_loss + 0.5 * sum(run.loss_fn(a, labels).loss.item() for a in aux)
    assert len(aux) == 2 and expected > main_loss * 1.2
    for m in run.backbone.modules():
        if isinstance(m, torch.nn.Dropout | torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    original = run.finetune
    run.finetune = None  # keep the modes set above (no fine-tuning here anyway)
    got, _, _ = run._forward_backward(images, labels, sync=True, epoch=0, micro=0)
    run.finetune = original
    assert got == pytest.approx(expected, rel=1e-9)
    heads = run.backbone.aux_heads
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters() if p.dim() > 1)


@pytest.mark.slow
def test_inception_aux_run_deploys_without_heads(small_faces: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, f"data.root={small_faces}", f"out_dir={tmp_path / 'run'}",
                             "model.backbone=inception_aux"])
    facelab.train(cfg, quiet=True)
    model = facelab.load(tmp_path / "run")
    assert model.architecture["backbone"] == "inception"
    path = model.save_bundle(tmp_path / "m.safetensors")
    bundle = facelab.load(path)
    assert not [k for k in bundle.backbone.state_dict() if k.startswith("aux_heads")]
    image = small_faces / "s1" / "1.pgm"
    assert bundle.fingerprint == model.fingerprint
    assert (bundle.embed_face(image).embedding == model.embed_face(image).embedding).all()
