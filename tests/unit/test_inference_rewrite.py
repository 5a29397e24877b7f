"""The network that serves is rewritten for CPU inference (batch norms folded, channels-last) and
must answer like the network as built, with weights produced by real training steps."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from modelloop.api.artifacts import WEIGHTS_FILE, Manifest, ManifestFile, sha256_stream
from modelloop_server.model import load_version
from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.inference import PROBABILITY_TOLERANCE, ChannelsLast, optimise

SIZE = 64  # ResNet's smallest sensible input keeps the test fast; the rewrites do not depend on it


def _trained(plugin: LaundryPlugin) -> nn.Module:
    """A few SGD steps on random images: batch-norm statistics and weights far from their initial values."""
    torch.manual_seed(3)
    net = plugin.build().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(4):
        x, y = torch.rand(8, 3, SIZE, SIZE), torch.randint(0, 2, (8,))
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _version(tmp: Path, net: nn.Module) -> Path:
    path = tmp / "v1"
    path.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path / WEIGHTS_FILE)
    with (path / WEIGHTS_FILE).open("rb") as f:
        sha, size = sha256_stream(f)
    files = [ManifestFile(path=WEIGHTS_FILE, size=size, sha256=sha)]
    manifest = Manifest(model="laundry", version="v1", created_at=datetime.now(UTC), files=files)
    (path / "manifest.json").write_bytes(manifest.to_bytes())
    return path


def _probabilities(net: nn.Module, x: Tensor) -> Tensor:
    with torch.inference_mode():
        return torch.softmax(net(x), dim=1)


def test_served_resnet_is_folded_channels_last_and_answers_like_the_trained_network(tmp_path: Path) -> None:
    plugin = LaundryPlugin(image_size=SIZE)
    trained = _trained(plugin)
    model = load_version(plugin, "v1", _version(tmp_path, trained), warmup_passes=1)
    assert isinstance(model.network, ChannelsLast)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.network.modules()), "batch norms were not folded"
    assert model.resident_bytes > 0.9 * sum(p.numel() * 4 for p in trained.parameters())
    for rows in (1, 8):
        x = torch.rand(rows, 3, SIZE, SIZE)
        want, got = _probabilities(trained, x), _probabilities(model.network, x)
        assert (want - got).abs().max() <= PROBABILITY_TOLERANCE
        assert torch.equal(want.argmax(dim=1), got.argmax(dim=1))


def test_the_network_given_is_left_as_built() -> None:
    plugin = LaundryPlugin(image_size=SIZE)
    trained = _trained(plugin)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    optimised = optimise(trained, plugin.input_shape, use_channels_last=True)
    assert optimised.steps == ("conv+bn folded", "channels-last")
    assert optimised.network is not trained
    after = trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class Branchy(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it, so it must be served as built."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.conv(x))
        if h.sum() > 0:
            h = h * 2
        out: Tensor = self.head(h.mean(dim=(2, 3)))
        return out


def test_a_network_the_rewrites_cannot_trace_is_served_as_built(caplog: pytest.LogCaptureFixture) -> None:
    net = Branchy().eval()
    optimised = optimise(net, (3, 16, 16), use_channels_last=True)
    assert optimised.network is net and optimised.steps == ()
    assert "serving Branchy as built" in caplog.text


def test_a_network_in_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        optimise(Branchy().train(), (3, 16, 16), use_channels_last=True)
