import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.config import DataConfig, SplitConfig
from facelab.data import FaceDataset, make_split, scan_folder
from facelab.data.sampler import RandomBatchSampler
from facelab.data.transforms import base_transform, eval_transform, train_transform
from facelab.errors import FacelabError
from facelab.images import read_image as load_rgb


def test_scan_orl(orl_root: Path) -> None:
    folder = scan_folder(orl_root)
    assert len(folder.identities) == 40 and folder.num_images == 400
    assert folder.report.bad_images == []
    assert "README" in folder.report.ignored_files  # stray file beside the identity folders is counted


def test_stray_broken_and_mixed_files(small_faces: Path) -> None:
    (small_faces / "s1" / "notes.txt").write_text("not a face")
    (small_faces / "s1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (small_faces / "pairs.txt").write_text("x")
    (small_faces / ".DS_Store").write_text("x")
    ident = small_faces / "s2"
    Image.new("RGBA", (50, 70), (10, 20, 30, 128)).save(ident / "rgba.png")
    Image.new("CMYK", (120, 90)).save(ident / "cmyk.jpg")
    Image.new("L", (40, 40)).save(ident / "grey.bmp")
    Image.new("P", (33, 44)).save(ident / "palette.png")
    folder = scan_folder(small_faces)
    assert [p for p, _ in folder.report.bad_images] == ["s1/broken.jpg"]
    assert sorted(folder.report.ignored_files) == ["pairs.txt", "s1/notes.txt"]
    assert len(folder.identities["s2"]) == 14
    summary = folder.report.summary(folder.num_images)
    assert summary.startswith(f"{folder.num_images} image(s) used; 2 file(s) ignored, not images (pairs.txt, "
                              "s1/notes.txt); 1 image(s) unusable (s1/broken.jpg is not a readable image")
    for name in ("rgba.png", "cmyk.jpg", "grey.bmp", "palette.png"):
        img = load_rgb(ident / name)
        assert img.mode == "RGB"
    ds = FaceDataset(small_faces, [(f"s2/{n}", 0) for n in ("rgba.png", "cmyk.jpg", "grey.bmp")], 64,
                     eval_transform(DataConfig()))
    batch = torch.stack([ds[i][0] for i in range(len(ds))])
    assert batch.shape == (3, 3, 64, 64) and batch.dtype == torch.float32


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(FacelabError, match="data folder not found"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacelabError, match="no identity folders with images"):
        scan_folder(tmp_path / "empty")
    (tmp_path / "empty" / "alice").mkdir()
    (tmp_path / "empty" / "alice" / "a.txt").write_text("x")
    with pytest.raises(FacelabError,
                       match=r"no identity folders with images.*1 file\(s\) ignored, not images \(alice/a\.txt\)"):
        scan_folder(tmp_path / "empty")


def test_split_is_seeded_disjoint_and_complete(orl_root: Path) -> None:
    folder = scan_folder(orl_root, verify=False)
    cfg = SplitConfig(seed=3, open_identities=10, closed_images_per_identity=2)
    a, b = make_split(folder, cfg), make_split(folder, cfg)
    assert a.to_dict() == b.to_dict()
    c = make_split(folder, SplitConfig(seed=4, open_identities=10, closed_images_per_identity=2))
    assert c.open_identities != a.open_identities
    assert len(a.classes) == 30 and len(a.open_identities) == 10
    assert len(a.train) == 240 and len(a.closed_test) == 60 and len(a.open_test) == 100
    train_ids = {a.classes[y] for _, y in a.train}
    open_ids = {p.split("/")[0] for p, _ in a.open_test}
    assert train_ids.isdisjoint(open_ids)  # no identity leaks from open-set test into training
    assert set(a.open_identities) == open_ids
    train_files, closed_files = {p for p, _ in a.train}, {p for p, _ in a.closed_test}
    assert train_files.isdisjoint(closed_files)
    assert {a.classes[y] for _, y in a.closed_test} == train_ids
    for p, y in a.train + a.closed_test:
        assert p.split("/")[0] == a.classes[y]
    for p, y in a.open_test:
        assert p.split("/")[0] == a.open_identities[y]


def test_split_fraction_and_manifest_round_trip(orl_root: Path, tmp_path: Path) -> None:
    from facelab.data import SplitManifest

    m = make_split(scan_folder(orl_root, verify=False), SplitConfig(open_identities=0.25))
    assert len(m.open_identities) == 10
    m.save(tmp_path / "split.json")
    import json

    assert SplitManifest.from_dict(json.loads((tmp_path / "split.json").read_text())) == m


def test_identity_with_too_few_images(small_faces: Path) -> None:
    for f in sorted((small_faces / "s3").iterdir())[1:]:
        f.unlink()
    folder = scan_folder(small_faces)
    with pytest.raises(FacelabError, match=r"identity 's3' has 1 image\(s\).*min_images_per_identity=2"):
        make_split(folder, SplitConfig(open_identities=2))
    folder = scan_folder(small_faces, min_images=2)
    assert "s3" not in folder.identities and folder.report.dropped_identities == [("s3", 1)]
    assert len(make_split(folder, SplitConfig(open_identities=2)).classes) == 5
    with pytest.raises(FacelabError, match="leaves no training identity"):
        make_split(folder, SplitConfig(open_identities=7))


def test_transforms_shapes_and_randomness() -> None:
    cfg = DataConfig(input_size=64)
    pixels = np.random.default_rng(0).integers(0, 255, (112, 92), np.uint8)
    img = base_transform(64)(Image.fromarray(pixels).convert("RGB"))
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
    ev = eval_transform(cfg)
    assert torch.equal(ev(img), ev(img))  # evaluation is deterministic
    x = ev(img)
    plain = img.as_subclass(torch.Tensor).float()
    assert torch.allclose(x.as_subclass(torch.Tensor), (plain / 255 - 0.5) / 0.5, atol=1e-6)
    tr = train_transform(cfg)
    torch.manual_seed(0)
    outs = [tr(img) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:])  # augmentation actually varies


def test_dataset_replaces_a_file_broken_after_scan(small_faces: Path, caplog: pytest.LogCaptureFixture) -> None:
    items = [("s1/1.pgm", 0), ("s1/2.pgm", 0), ("s2/1.pgm", 1)]
    ds = FaceDataset(small_faces, items, 64, eval_transform(DataConfig()))
    (small_faces / "s1" / "1.pgm").write_bytes(b"P5 garbage")
    x, y = ds[0]
    assert y == 0 and torch.equal(x, ds[1][0])  # replaced by another image of the same identity
    assert ds.failed == {"s1/1.pgm"} and "s1/1.pgm" in caplog.text
    with pytest.raises(FacelabError, match=r"1\.pgm is not a readable image"):
        FaceDataset(small_faces, items, 64, cache=True)
    shutil.rmtree(small_faces / "s2")
    with pytest.raises(FacelabError, match="missing"):
        FaceDataset(small_faces, items[2:], 64, cache=True)


def test_random_batch_sampler_is_seeded_and_drops_partial() -> None:
    g = torch.Generator().manual_seed(1)
    s = RandomBatchSampler(10, 4, g)
    first = list(s)
    assert len(first) == len(s) == 2 and all(len(b) == 4 for b in first)
    assert len({i for b in first for i in b}) == 8
    g.manual_seed(1)
    assert list(s) == first
