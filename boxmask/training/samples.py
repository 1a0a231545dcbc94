"""Torch dataset of training crops and the deterministic batch order.

``CropDataset[i]`` loads instance ``i`` of a dataset, augments it (training) and runs the crop
pipeline. The augmentation of sample ``i`` in epoch ``e`` is drawn from a generator seeded with
``(seed, e, i)``, and the order of epoch ``e`` is a permutation seeded with ``(seed, e)``: a run
resumed at step ``k`` sees exactly the batches and augmentations the uninterrupted run saw, with
any number of data-loader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..guidance import CropSettings
from .datasets import InstanceDataset, InstanceRef
from .transforms import AugmentSettings, augment, crop_sample

log = logging.getLogger(__name__)

MAX_SKIPS = 20
"""A sample that cannot be loaded or cropped is replaced by the next one, at most this often."""


class CropDataset(Dataset):
    """Crops of the instances ``refs`` of ``dataset``.

    Items are dicts of tensors: ``x`` (5, S, S) float32, ``gt`` (1, S, S) float32 soft mask,
    ``void`` (1, S, S) float32, ``clicks`` (5, 2) int64 (S-space ``(x, y)``), ``index`` (int64).
    """

    def __init__(self, dataset: InstanceDataset, refs: Sequence[InstanceRef],
                 crop: CropSettings | None = None,
                 augment_with: AugmentSettings | None = None, seed: int = 0) -> None:
        self.dataset = dataset
        self.refs = list(refs)
        self.crop = crop if crop is not None else CropSettings()
        self.augment_with = augment_with
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before building the loader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.refs)

    def sample_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for skip in range(MAX_SKIPS):
            i = (int(index) + skip) % len(self.refs)
            ref = self.refs[i]
            try:
                item = self._make(i, ref)
            except Exception as exc:  # a corrupt file must not end a long run
                log.warning("skipping %s %s instance %s: %s", ref.dataset, ref.image_id,
                            ref.instance, exc)
                continue
            if item is not None:
                return item
            log.debug("skipping %s %s instance %s: empty at the network size", ref.dataset,
                      ref.image_id, ref.instance)
        raise RuntimeError(f"{MAX_SKIPS} consecutive samples from index {index} are unusable")

    def _make(self, index: int, ref: InstanceRef) -> dict[str, torch.Tensor] | None:
        inst = self.dataset.load(ref)
        image = inst.image.astype(np.float32)
        mask, void = inst.mask, inst.void & ~inst.mask
        if self.augment_with is not None:
            image, mask, void = augment(image, mask, void, self.sample_rng(index),
                                        self.augment_with)
        s = crop_sample(image, mask, void, self.crop)
        if s is None:
            return None
        return {
            "x": torch.from_numpy(s.x),
            "gt": torch.from_numpy(s.gt)[None],
            "void": torch.from_numpy(s.void)[None],
            "clicks": torch.from_numpy(s.clicks),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  min_batch: int = 2) -> list[list[int]]:
    """The batches of one epoch: a permutation of ``range(n)`` seeded with ``(seed, epoch)``, cut
    into ``batch_size`` chunks; a last chunk smaller than ``min_batch`` is dropped (BatchNorm in
    training mode needs two samples behind the 1 x 1 pooling of the PSP module)."""
    if shuffle:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch])
                                              .generate_state(1)[0]))
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if batches and len(batches[-1]) < min_batch:
        batches.pop()
    return batches
