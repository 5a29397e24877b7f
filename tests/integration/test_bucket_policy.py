"""The documented bucket policies (docs/storage/{trainer,verifier,serving}-policy.json) hold on a real MinIO.

Applied as written (only the bucket name replaced) to fresh MinIO users through MinIO's admin API:
the training identity works in its model's prefix and reads its dataset, and cannot write the
holdout set, the verification results its version is judged on, another model's prefix, or read or
list it; the verifier identity reads what it measures and writes the verification results only; the
serving identity reads the models and writes feedback, receipts and inputs sent inline only.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from minio import MinioAdmin
from minio.credentials import StaticProvider
from minio.error import S3Error

from modelloop.clients.objectstore import ObjectStore, StoreConfig
from modelloop_dev.minio import MinioServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POLICIES = Path(__file__).resolve().parents[2] / "docs/storage"


def identity(minio: MinioServer, bucket: str, role: str) -> StoreConfig:
    """A MinIO user holding only the documented ``<role>-policy.json`` for ``bucket``."""
    text = (POLICIES / f"{role}-policy.json").read_text()
    document: dict[str, Any] = json.loads(text.replace("arn:aws:s3:::models", f"arn:aws:s3:::{bucket}"))
    admin = MinioAdmin(
        endpoint=minio.endpoint, credentials=StaticProvider(minio.access_key, minio.secret_key), secure=False
    )
    user, password, name = f"{role}-{secrets.token_hex(4)}", secrets.token_urlsafe(18), f"{role}-{bucket}"
    admin.user_add(user, password)
    admin.policy_add(name, policy=document)
    admin.attach_policy([name], user=user)
    return StoreConfig(endpoint=minio.endpoint, access_key=user, secret_key=password, bucket=bucket)


def denied(action: Callable[[], object]) -> bool:
    try:
        action()
    except S3Error as e:
        return e.code == "AccessDenied"
    return False


def test_the_trainer_policy_scopes_writes_to_its_model_and_keeps_the_holdout_read_only(
    minio: MinioServer, bucket: str
) -> None:
    admin_store = minio.store(bucket)
    admin_store.put_bytes("datasets/digits/holdout.safetensors", b"the holdout every version is measured on")
    admin_store.put_bytes("digits/feedback/batch-1.jsonl", b"{}\n")
    admin_store.put_bytes("other/v1/manifest.json", b"{}")
    trainer = ObjectStore(identity(minio, bucket, "trainer"), attempts=1)

    assert trainer.get_bytes("datasets/digits/holdout.safetensors").startswith(b"the holdout")
    assert list(trainer.list_keys("digits/feedback/")) == ["digits/feedback/batch-1.jsonl"]
    trainer.put_bytes("digits/v2/weights.safetensors", b"new weights")
    trainer.put_bytes("digits/v2/checkpoints/epoch-1.pt", b"checkpoint")
    assert trainer.remove_prefix("digits/v2/checkpoints/") == 1

    assert denied(lambda: trainer.put_bytes("datasets/digits/holdout.safetensors", b"an easier holdout"))
    assert denied(lambda: trainer.put_bytes("datasets/digits/train.safetensors", b"poisoned"))
    assert denied(lambda: trainer.put_bytes("other/v1/manifest.json", b"{}"))
    assert denied(lambda: trainer.get_bytes("other/v1/manifest.json"))
    assert denied(lambda: list(trainer.list_keys("other/")))
    assert admin_store.get_bytes("datasets/digits/holdout.safetensors").startswith(b"the holdout")


def test_verification_results_are_written_by_the_verifier_and_not_by_the_trainer(
    minio: MinioServer, bucket: str
) -> None:
    admin_store = minio.store(bucket)
    admin_store.put_bytes("datasets/digits/holdout.safetensors", b"the holdout every version is measured on")
    admin_store.put_bytes("digits/v1/verification.json", b'{"verdict": "measured by the verifier"}')
    trainer = ObjectStore(identity(minio, bucket, "trainer"), attempts=1)
    verifier = ObjectStore(identity(minio, bucket, "verifier"), attempts=1)

    trainer.put_bytes("digits/v2/model.safetensors", b"candidate weights")
    trainer.put_bytes("digits/v2/manifest.json", b'{"files": "the trainer lists them"}')
    assert denied(lambda: trainer.put_bytes("digits/v2/verification.json", b'{"holdout_accuracy": 1.0}'))
    assert denied(lambda: trainer.put_bytes("digits/v1/verification.json", b'{"holdout_accuracy": 1.0}'))
    assert denied(lambda: trainer.put_bytes("datasets/digits/holdout.safetensors", b"an easier holdout"))

    assert verifier.get_bytes("digits/v2/model.safetensors") == b"candidate weights"
    assert verifier.get_bytes("datasets/digits/holdout.safetensors").startswith(b"the holdout")
    assert sorted(verifier.list_keys("digits/v2/")) == ["digits/v2/manifest.json", "digits/v2/model.safetensors"]
    verifier.put_bytes("digits/v2/verification.json", b'{"holdout_accuracy": 0.93}')
    assert denied(lambda: verifier.put_bytes("digits/v2/model.safetensors", b"other weights"))
    assert denied(lambda: verifier.put_bytes("digits/v2/manifest.json", b"{}"))
    assert denied(lambda: verifier.put_bytes("datasets/digits/holdout.safetensors", b"an easier holdout"))
    assert denied(lambda: verifier.put_bytes("other/v1/verification.json", b"{}"))

    assert admin_store.get_bytes("digits/v2/verification.json") == b'{"holdout_accuracy": 0.93}'
    assert admin_store.get_bytes("digits/v1/verification.json") == b'{"verdict": "measured by the verifier"}'
    assert admin_store.get_bytes("digits/v2/model.safetensors") == b"candidate weights"
    assert admin_store.get_bytes("datasets/digits/holdout.safetensors").startswith(b"the holdout")


def test_the_serving_policy_writes_feedback_receipts_and_inline_inputs_only(minio: MinioServer, bucket: str) -> None:
    admin_store = minio.store(bucket)
    admin_store.put_bytes("laundry/v1/model.safetensors", b"served weights")
    admin_store.put_bytes("laundry/inputs/TASK-1.png", b"a client's photo")
    serving = ObjectStore(identity(minio, bucket, "serving"), attempts=1)

    assert serving.get_bytes("laundry/v1/model.safetensors") == b"served weights"
    assert serving.get_bytes("laundry/inputs/TASK-1.png") == b"a client's photo"
    serving.put_bytes("laundry/feedback/batch-1.jsonl", b"{}\n")
    serving.put_bytes("laundry/receipts/batch-1.jsonl", b"{}\n")
    serving.put_bytes(f"laundry/inline-inputs/{'a' * 64}", b"an image sent inline")

    assert denied(lambda: serving.put_bytes("laundry/v1/model.safetensors", b"other weights"))
    assert denied(lambda: serving.put_bytes("laundry/v2/manifest.json", b"{}"))
    assert denied(lambda: serving.put_bytes("laundry/inputs/TASK-1.png", b"another photo"))
    assert denied(lambda: serving.put_bytes("datasets/laundry/train.jsonl", b"poisoned"))
    assert admin_store.get_bytes("laundry/v1/model.safetensors") == b"served weights"
    assert admin_store.get_bytes("laundry/inputs/TASK-1.png") == b"a client's photo"
    assert admin_store.get_bytes(f"laundry/inline-inputs/{'a' * 64}") == b"an image sent inline"
