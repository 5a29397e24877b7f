"""Loading a version adopts the file's tensors without a random initialisation first, and falls back
to the ordinary build wherever that shortcut would not give the same network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from modelloop.api.artifacts import WEIGHTS_FILE, ArtifactError, Manifest, ManifestFile, sha256_stream
from modelloop_server.model import load_version
from modelloop_trainer.examples.digits import DigitsNet, DigitsPlugin


class ScaledNet(DigitsNet):
    """A non-persistent buffer: the weights file cannot carry it, so the meta build would leave it empty."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = super().forward(x) * self.scale
        return out


class ScaledPlugin(DigitsPlugin):
    def build(self) -> nn.Module:
        return ScaledNet()


def _version(tmp: Path, net: nn.Module, version: str = "v1") -> Path:
    path = tmp / version
    path.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path / WEIGHTS_FILE)
    with (path / WEIGHTS_FILE).open("rb") as f:
        sha, size = sha256_stream(f)
    manifest = Manifest(
        model="digits",
        version=version,
        created_at=datetime.now(UTC),
        files=[ManifestFile(path=WEIGHTS_FILE, size=size, sha256=sha)],
    )
    (path / "manifest.json").write_bytes(manifest.to_bytes())
    return path


@pytest.mark.parametrize("plugin", [DigitsPlugin(), ScaledPlugin()], ids=["meta build", "fallback build"])
def test_loaded_network_answers_like_the_saved_one(tmp_path: Path, plugin: DigitsPlugin) -> None:
    torch.manual_seed(7)
    saved = plugin.build().eval()
    model = load_version(plugin, "v1", _version(tmp_path, saved))
    assert not any(t.is_meta for t in (*model.network.parameters(), *model.network.buffers()))
    x = torch.rand((5, 64)) * 16
    with torch.inference_mode():
        assert torch.equal(model.network(x), saved(x))


def test_weights_of_another_shape_are_refused(tmp_path: Path) -> None:
    wrong = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ArtifactError, match="do not fit plug-in DigitsPlugin"):
        load_version(DigitsPlugin(), "v1", _version(tmp_path, wrong))
