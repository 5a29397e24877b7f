"""Seeding a bucket with a plug-in's base dataset (``modelloop-trainer seed-dataset``).

Run once per bucket by whoever sets a model up (the demo, the tests, a team's bootstrap Job);
training and verification then read ``<dataset>/train.safetensors`` and ``holdout.safetensors``.
"""

from __future__ import annotations

import logging

from modelloop.clients.objectstore import ObjectStore

from .plugin import ModelPlugin, split_to_bytes

log = logging.getLogger(__name__)

SPLITS = ("train", "holdout")


def split_key(dataset: str, split: str) -> str:
    return f"{dataset.strip('/')}/{split}.safetensors"


def seed_dataset(store: ObjectStore, plugin: ModelPlugin, dataset: str, force: bool = False) -> bool:
    """Upload the plug-in's (train, holdout) once; False if both are already there and not ``force``.

    Never silently replaces an existing holdout: every version ever verified was measured on it.
    """
    keys = [split_key(dataset, s) for s in SPLITS]
    if not force and all(store.exists(k) for k in keys):
        log.info("dataset s3://%s/%s already seeded; leaving it as it is", store.bucket, dataset)
        return False
    train, holdout = plugin.base_dataset()
    for key, split in zip(keys, (train, holdout), strict=True):
        plugin.check_split({"x": split.x, "y": split.y}, f"s3://{store.bucket}/{key}")
        store.put_bytes(key, split_to_bytes(split))
    log.info("seeded s3://%s/%s: %d training and %d holdout samples", store.bucket, dataset, len(train), len(holdout))
    return True
