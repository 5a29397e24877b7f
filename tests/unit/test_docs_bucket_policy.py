"""The bucket policy install.md shows is the file test_bucket_policy.py applies to a real MinIO user."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_install_md_shows_the_tested_trainer_policy() -> None:
    text = (DOCS / "install.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    tested = json.loads((DOCS / "storage/trainer-policy.json").read_text())
    assert tested in blocks, "docs/install.md's trainer policy drifted from docs/storage/trainer-policy.json"
