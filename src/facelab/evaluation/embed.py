"""Embedding extraction with optional flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


@torch.no_grad()
def extract_embeddings(model: nn.Module, dataset: Dataset, batch_size: int = 128, flip: bool = True,
                       device: torch.device | str = "cpu", desc: str = "embed", progress: bool = True
                       ) -> np.ndarray:
    """Raw (un-normalised) embeddings, float32 (N, D). With ``flip`` each is the mean of the image and its mirror,
    which removes the left/right bias a face crop always has and usually lifts verification accuracy."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    chunks = []
    for images, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        images = images.to(device)
        emb = model(images)
        if flip:
            emb = (emb + model(torch.flip(images, dims=[3]))) / 2
        chunks.append(emb.float().cpu())
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
