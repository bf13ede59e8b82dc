"""Data: identity folders, seeded split manifests, transforms and datasets."""

from facelab.data.dataset import FaceDataset
from facelab.data.folder import FaceFolder, ScanReport, scan_folder
from facelab.data.splits import SplitManifest, make_split
from facelab.data.transforms import base_transform, eval_transform, train_transform

__all__ = [
    "FaceDataset",
    "FaceFolder",
    "ScanReport",
    "SplitManifest",
    "base_transform",
    "eval_transform",
    "make_split",
    "scan_folder",
    "train_transform",
]
