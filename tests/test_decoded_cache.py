"""The decoded-once uint8 cache in a memory-mapped file (data.cache_dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from facelab.data.dataset import FaceDataset
from facelab.errors import FacelabError
from facelab.images import read_image


def _items(root: Path) -> list[tuple[str, int]]:
    return [(p.relative_to(root).as_posix(), int(p.parent.name[1:])) for p in sorted(root.rglob("*.pgm"))]


def test_memory_mapped_cache_matches_ram_and_is_reused(small_faces: Path, tmp_path: Path) -> None:
    items = _items(small_faces)
    calls: list[Path] = []

    def counting(p: Path) -> object:
        calls.append(p)
        return read_image(p)

    ram = FaceDataset(small_faces, items, 32, cache=True)
    disk = FaceDataset(small_faces, items, 32, cache=True, cache_dir=tmp_path / "c", reader=counting)
    assert len(calls) == len(items)
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".u8")
    for i in (0, 7, len(items) - 1):
        assert torch.equal(ram[i][0], disk[i][0]) and ram[i][1] == disk[i][1]
    again = FaceDataset(small_faces, items, 32, cache=True, cache_dir=tmp_path / "c", reader=counting)
    assert len(calls) == len(items)  # nothing decoded: the file was reused
    assert torch.equal(again[3][0], ram[3][0])
    # a changed image is a new cache, never a stale one
    target = small_faces / items[0][0]
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    FaceDataset(small_faces, items, 32, cache=True, cache_dir=tmp_path / "c", reader=counting)
    assert len(calls) == 2 * len(items)
    assert len(list((tmp_path / "c").glob("*.u8"))) == 2


def test_a_failed_build_leaves_no_file(small_faces: Path, tmp_path: Path) -> None:
    items = _items(small_faces)
    shutil.copy(small_faces / items[0][0], small_faces / "s1" / "x.pgm")
    (small_faces / "s1" / "x.pgm").write_bytes(b"P5 broken")
    with pytest.raises(FacelabError):
        FaceDataset(small_faces, [*items[:5], ("s1/x.pgm", 1), *items[5:]], 32, cache=True,
                    cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_training_from_the_memory_mapped_cache(small_faces: Path, tmp_path: Path) -> None:
    from facelab.config import load_config
    from facelab.engine import train

    cfg = load_config(None, ["data.input_size=32", "data.batch_size=16", "model.width=8", "model.embedding_dim=16",
                             "loss.options.scale=16", "optim.epochs=1", "threads=1", "data.split.open_identities=2",
                             f"data.root={small_faces}", f"out_dir={tmp_path / 'r'}", "data.cache_images=true",
                             f"data.cache_dir={tmp_path / 'cache'}", "data.pipeline=fast"])
    assert len(train(cfg, quiet=True).history) == 1
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1
