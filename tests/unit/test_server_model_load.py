"""Loading a version adopts the file's tensors without a random initialisation first, and falls back
to the ordinary build wherever that shortcut would not give the same network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from modelloop.api.artifacts import WEIGHTS_FILE, ArtifactError, Manifest, ManifestFile, sha256_stream
from modelloop_server.model import load_version
from modelloop_server.synthetic import write_local_version
from modelloop_trainer.examples.digits import DigitsNet, DigitsPlugin
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.examples.laundry_data import png, swatch

LAUNDRY = "modelloop_trainer.examples.laundry:LaundryPlugin"


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


def test_a_version_is_served_at_the_image_size_its_manifest_says_whatever_the_servers_own_setting(
    tmp_path: Path,
) -> None:
    trained = LaundryPlugin(image_size=40, env={})
    write_local_version(trained, LAUNDRY, tmp_path, "laundry", "v1", seed=1)
    served = LaundryPlugin(image_size=64, env={})  # the server's environment says 64

    model = load_version(served, "v1", tmp_path / "v1", warmup_passes=1)

    assert model.plugin is not None and model.plugin.input_shape == (3, 40, 40)
    assert model.plugin.preprocessing() == {"imageSize": 40} == trained.preprocessing()
    assert served.input_shape == (3, 64, 64), "the server's plug-in is not changed: other versions load beside"
    photo = png(swatch(np.random.default_rng(3), 96, defect=True).pixels)
    x = model.plugin.preprocess([model.plugin.decode_bytes(photo)])
    assert tuple(model.probabilities(x).shape) == (1, 2)


def test_a_manifest_asking_for_preprocessing_the_plugin_cannot_do_is_refused(tmp_path: Path) -> None:
    path = _version(tmp_path, DigitsNet())
    manifest = Manifest.model_validate_json((path / "manifest.json").read_bytes())
    manifest.preprocessing = {"imageSize": 64}
    (path / "manifest.json").write_bytes(manifest.to_bytes())
    with pytest.raises(ArtifactError, match=r"cannot preprocess inputs for v1 as it was trained: .*DigitsPlugin"):
        load_version(DigitsPlugin(), "v1", path, warmup_passes=1)
