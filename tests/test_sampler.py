"""The P x K batch sampler: batch composition, determinism, small identities, length, option errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from facelab.config import DataConfig
from facelab.data.sampler import SAMPLERS, PKBatchSampler, build_batch_sampler
from facelab.errors import FacelabError

# 10 identities with 6 images each, plus identity 10 with only 2 images
LABELS = [i // 6 for i in range(60)] + [10, 10]


def pk(seed: int = 0, labels: list[int] = LABELS, **options: object) -> PKBatchSampler:
    cfg = DataConfig(batch_size=12, sampler="pk", sampler_options=dict(options))
    return build_batch_sampler(labels, cfg, torch.Generator().manual_seed(seed))  # type: ignore[return-value]


def test_pk_is_registered() -> None:
    assert "pk" in SAMPLERS


def test_every_batch_has_p_distinct_identities_with_k_images_each() -> None:
    sampler = pk(p=4, k=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(LABELS) // 12
    for b in batches:
        counts = Counter(LABELS[i] for i in b)
        assert len(b) == 12 and len(counts) == 4 and set(counts.values()) == {3}
        for ident in counts:  # identities with >= K images contribute K different images
            if ident != 10:
                assert len({i for i in b if LABELS[i] == ident}) == 3


def test_default_k_is_4_and_p_fills_the_batch_size() -> None:
    sampler = pk()
    assert (sampler.p, sampler.k) == (3, 4)


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    assert list(pk(7, p=4, k=3)) == list(pk(7, p=4, k=3))
    assert list(pk(7, p=4, k=3)) != list(pk(8, p=4, k=3))


def test_identities_are_spread_evenly_over_an_epoch() -> None:
    labels = [i // 4 for i in range(40 * 4)]
    sampler = pk(0, labels, p=8, k=4)
    # 5 batches x 8 identities = 40 slots for 40 identities: the permutation stream uses each identity once
    for _ in range(2):  # and again on the next pass
        per_identity = Counter(labels[i] for b in sampler for i in b[::4])
        assert len(per_identity) == 40 and set(per_identity.values()) == {1}


def test_small_identity_is_filled_with_replacement() -> None:
    labels = [0] * 2 + [1] * 5 + [2] * 5
    sampler = pk(3, labels, p=3, k=4)
    for b in sampler:
        small = [i for i in b if labels[i] == 0]
        assert len(small) == 4 and set(small) == {0, 1}  # both images, then repeats


def test_no_identity_twice_in_a_batch_when_p_does_not_divide_identities() -> None:
    labels = [i // 3 for i in range(7 * 3)]
    sampler = PKBatchSampler(labels, p=3, k=2, generator=torch.Generator().manual_seed(1))
    sampler.num_batches = 50
    for b in sampler:
        idents = [labels[i] for i in b[::2]]
        assert len(set(idents)) == 3


@pytest.mark.parametrize(("options", "expected"), [
    ({"p": 12, "k": 1}, "data.sampler_options.p=12"),
    ({"p": 1, "k": 4}, "data.sampler_options.p"),
    ({"p": 4, "k": 0}, "data.sampler_options.k"),
    ({"p": 4, "k": 2.5}, "data.sampler_options.k"),
    ({"P": 4}, "unknown data.sampler_options P"),
])
def test_bad_options_raise(options: dict, expected: str) -> None:
    with pytest.raises(FacelabError, match=expected.replace(".", r"\.")):
        pk(**options)


# -- auto: the loss's needs decide --------------------------------------------------------------------------------
def auto(labels: list[int], images_per_identity: int, batch_size: int = 12, **options: object):
    cfg = DataConfig(batch_size=batch_size, sampler_options=dict(options))
    assert cfg.sampler == "auto"  # the default
    return build_batch_sampler(labels, cfg, torch.Generator().manual_seed(0), images_per_identity)


def test_auto_shuffles_for_a_classifier_and_draws_pk_batches_for_a_pair_loss() -> None:
    from facelab.data.sampler import RandomBatchSampler

    assert isinstance(auto(LABELS, 1), RandomBatchSampler)
    sampler = auto(LABELS, 2)
    # the smallest identity has 2 images, so K = 2 (no image repeated to fill K) and P = 12 // 2 = 6
    assert isinstance(sampler, PKBatchSampler) and (sampler.p, sampler.k) == (6, 2)
    for b in sampler:
        assert sorted(Counter(LABELS[i] for i in b).values()) == [2] * 6 and len(set(b)) == 12
    big = [i // 6 for i in range(60)]
    assert (auto(big, 2).p, auto(big, 2).k) == (3, 4)  # K capped at 4 (Hermans et al.)
    assert (auto(big, 2, batch_size=64).p, auto(big, 2, batch_size=64).k) == (10, 4)  # P: at most every identity
    assert (auto(big, 2, k=3).p, auto(big, 2, k=3).k) == (3, 3)  # given options win


def test_auto_refuses_options_it_would_ignore_and_a_single_identity() -> None:
    with pytest.raises(FacelabError, match="have no effect: sampler 'auto' shuffles for this loss"):
        auto(LABELS, 1, k=4)
    with pytest.raises(FacelabError, match="P x K batches need at least 2 training identities, got 1"):
        auto([0, 0, 0, 0], 2)
