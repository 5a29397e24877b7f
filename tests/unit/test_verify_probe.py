"""The verifier's latency probe sends what clients send: for an image model, encoded files decoded by
the plug-in's ``decode_bytes`` (the server's BYTES path), not tensors decoded ahead of time."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import Tensor, nn

from modelloop_trainer.examples.laundry import LaundryPlugin
from modelloop_trainer.verify import LATENCY_REQUESTS, WARMUP_REQUESTS, probe

SIZE = 32


class CountingPlugin(LaundryPlugin):
    """The laundry decoder, counted; a tiny network so the probe's ~250 passes take a moment."""

    def __init__(self) -> None:
        super().__init__(image_size=SIZE)
        self.decoded = 0
        self.preprocessed = 0

    def build(self) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def decode_bytes(self, raw: bytes) -> Tensor:
        self.decoded += 1
        return super().decode_bytes(raw)

    def preprocess(self, batch: object) -> Tensor:
        self.preprocessed += 1
        return super().preprocess(batch)  # type: ignore[arg-type]


def _jpeg(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(SIZE + 8, SIZE + 8, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def test_image_probe_decodes_every_request_through_the_plugin() -> None:
    plugin = CountingPlugin()
    net = plugin.build().eval()
    result = probe(plugin, net, [_jpeg(i) for i in range(4)], torch.device("cpu"))
    single = WARMUP_REQUESTS + LATENCY_REQUESTS
    assert plugin.decoded > single, "the throughput phase decodes its batches too"
    assert plugin.preprocessed > single
    assert 0 < result.latency_p50_ms <= result.latency_p95_ms
    assert result.throughput_rps > 0


def test_number_probe_sends_json_like_lists_without_decoding() -> None:
    plugin = CountingPlugin()
    net = plugin.build().eval()
    requests = [torch.rand(3, SIZE, SIZE).tolist() for _ in range(2)]
    probe(plugin, net, requests, torch.device("cpu"))
    assert plugin.decoded == 0
    assert plugin.preprocessed > WARMUP_REQUESTS + LATENCY_REQUESTS
