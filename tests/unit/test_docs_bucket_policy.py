"""The bucket policies install.md shows are the files test_bucket_policy.py applies to real MinIO users."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("role", ["trainer", "verifier", "serving"])
def test_install_md_shows_the_tested_policies(role: str) -> None:
    text = (DOCS / "install.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    tested = json.loads((DOCS / f"storage/{role}-policy.json").read_text())
    assert tested in blocks, f"docs/install.md's {role} policy drifted from docs/storage/{role}-policy.json"
