"""Shared fixtures. Real faces come from ../shared/data beside the repo (as in CI); tests needing them skip without."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: ../shared/data beside the repo; FACELAB_SHARED_DATA points elsewhere (a git worktree that does not sit beside it)
SHARED_DATA = Path(os.environ.get("FACELAB_SHARED_DATA") or REPO.parent / "shared" / "data")
BUNDLED_ORL = REPO / "src" / "facelab" / "assets" / "att_faces"


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("torch_one_thread")``): tiny
    models gain nothing from threads, and on a shared 2-core machine extra threads only contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _crop_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Aligned-crop caches (facelab.faces.cache) go to a folder of this test session, never to ~/.cache."""
    os.environ["FACELAB_CACHE"] = str(tmp_path_factory.mktemp("facelab-cache"))


@pytest.fixture(scope="session")
def orl_root() -> Path:
    """The ORL faces (40 identities x 10 PGM images); the bundled copy when ../shared is absent."""
    root = SHARED_DATA / "att_faces"
    return root if root.is_dir() else BUNDLED_ORL


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    root = SHARED_DATA / "lfw_deepfunneled"
    if not root.is_dir():
        pytest.skip("../shared/data/lfw_deepfunneled not present")
    return root


@pytest.fixture()
def small_faces(tmp_path: Path, orl_root: Path) -> Path:
    """A writable copy of 8 ORL identities (10 images each) to add stray or broken files to."""
    root = tmp_path / "faces"
    for ident in [f"s{i}" for i in range(1, 9)]:
        shutil.copytree(orl_root / ident, root / ident)
    return root
