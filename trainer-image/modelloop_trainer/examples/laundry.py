"""The image example: "laundry inspection", a torchvision ResNet judging photos of fabric (ok/defect).

Transfer learning starts from base weights a user uploads to the bucket (a safetensors state dict
with torchvision's names, e.g. ImageNet weights converted once offline: the hub is not reachable
from a cluster like this one). Settings come from the trainer's environment, so the same class
serves every variant:

- ``MODELLOOP_LAUNDRY_ARCH``: ``resnet18`` (default) or ``resnet50``
- ``MODELLOOP_LAUNDRY_IMAGE_SIZE``: square input side in pixels (default 224)
- ``MODELLOOP_LAUNDRY_FREEZE_BACKBONE``: ``true`` trains only the classification head
- ``MODELLOOP_LAUNDRY_BASE_WEIGHTS``: bucket key of the base weights (unset: random initialisation)

A policy's ``hyperparameters.imageSize``, ``freezeBackbone``, ``frozenLayers`` and ``baseWeights``
override these for training and verification (:meth:`LaundryPlugin.configure`). The trained image size is
written into the version's manifest (``preprocessing``) and the server decodes photos for that version at
that size (:meth:`LaundryPlugin.for_preprocessing`), whatever its own environment says.

Inputs are RGB values in [0, 1], ``[3, size, size]``; ImageNet normalisation lives in the network.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.transforms.v2 import functional as TF

from modelloop.api.artifacts import ArtifactError
from modelloop.api.retrainpolicy import Hyperparameters
from modelloop.clients.objectstore import NotFound, ObjectStore
from modelloop_trainer.plugin import InputError
from modelloop_trainer.streaming import StreamingPlugin

ENV_ARCH = "MODELLOOP_LAUNDRY_ARCH"
ENV_IMAGE_SIZE = "MODELLOOP_LAUNDRY_IMAGE_SIZE"
ENV_FREEZE = "MODELLOOP_LAUNDRY_FREEZE_BACKBONE"
ENV_BASE_WEIGHTS = "MODELLOOP_LAUNDRY_BASE_WEIGHTS"
IMAGE_SIZE = "imageSize"  # the manifest's preprocessing key (the policy's hyperparameter of the same name)

ARCHS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
HEAD = "fc."
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_ROTATION = 15.0
MAX_JITTER = 0.2  # brightness and contrast factors drawn from [0.8, 1.2]
MAX_ENCODED_PIXELS = 64_000_000  # a decompression bomb is refused before it is decoded


# The backbone's stages from the input side: hyperparameters.frozenLayers N freezes the first N.
STAGES: tuple[tuple[str, ...], ...] = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


def frozen_modules(frozen_layers: int) -> tuple[str, ...]:
    """Names of the top-level modules frozen by ``frozen_layers`` (0..5; 5 is the whole backbone)."""
    if not 0 <= frozen_layers <= len(STAGES):
        raise ValueError(f"frozenLayers {frozen_layers}: must be 0..{len(STAGES)} (the stem and layer1..layer4)")
    return tuple(name for stage in STAGES[:frozen_layers] for name in stage)


class LaundryNet(ResNet):  # type: ignore[misc]  # torchvision ships no type information
    """torchvision's ResNet (same state-dict names, so torchvision weights load as they are) with
    the normalisation built in and, for frozen stages, their batch norms kept in eval mode."""

    def __init__(self, arch: str, num_classes: int, freeze_backbone: bool, frozen_layers: int = 0) -> None:
        block, layers = ARCHS[arch]
        super().__init__(block, layers, num_classes=num_classes)
        self.frozen = frozen_modules(len(STAGES) if freeze_backbone else frozen_layers)
        self.freeze_backbone = len(self.frozen) == sum(len(s) for s in STAGES)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        for name, p in self.named_parameters():
            if name.split(".", 1)[0] in self.frozen:
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> LaundryNet:
        super().train(mode)
        if self.frozen and mode:
            # Frozen means frozen: running statistics must not drift with the new data either.
            for name in self.frozen:
                getattr(self, name).eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = super().forward((x - self.mean) / self.std)
        return out


def _flag(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("", "0", "false", "no"):
        return False
    raise ValueError(f"{name}={value!r}: expected true or false")


class LaundryPlugin(StreamingPlugin):
    num_classes: ClassVar[int] = 2
    class_names: ClassVar[tuple[str, ...]] = ("ok", "defect")
    value_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    input_shape: ClassVar[tuple[int, ...]] = (3, 224, 224)
    channels_last: ClassVar[bool] = True  # ResNet at 224x224 on CPU: see bench/bench_inference.py

    def __init__(
        self,
        arch: str | None = None,
        image_size: int | None = None,
        freeze_backbone: bool | None = None,
        base_weights: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        e = os.environ if env is None else env
        self.arch = arch or e.get(ENV_ARCH, "").strip() or "resnet18"
        if self.arch not in ARCHS:
            raise ValueError(f"{ENV_ARCH}={self.arch!r}: expected one of {sorted(ARCHS)}")
        if image_size is None:
            raw = e.get(ENV_IMAGE_SIZE, "").strip() or "224"
            try:
                image_size = int(raw)
            except ValueError as err:
                raise ValueError(f"{ENV_IMAGE_SIZE}={raw!r} is not a whole number of pixels") from err
        if not 32 <= image_size <= 1024:
            raise ValueError(f"{ENV_IMAGE_SIZE}={image_size}: must be 32..1024 pixels (ResNet downsamples 32x)")
        self.image_size = image_size
        # Per instance: the image size is a setting, and preprocess()/check_split() read input_shape.
        self.input_shape = (3, image_size, image_size)  # type: ignore[misc]
        self.freeze_backbone = (
            freeze_backbone if freeze_backbone is not None else _flag(e.get(ENV_FREEZE, ""), ENV_FREEZE)
        )
        self.frozen_layers = 0
        self.base_weights = base_weights if base_weights is not None else (e.get(ENV_BASE_WEIGHTS, "").strip() or None)

    def configure(self, hp: Hyperparameters) -> None:
        """The policy's imageSize, freezeBackbone, frozenLayers and baseWeights win over the environment's."""
        if hp.image_size is not None:
            self.image_size = hp.image_size
            self.input_shape = (3, hp.image_size, hp.image_size)  # type: ignore[misc]
        if hp.freeze_backbone is not None:
            self.freeze_backbone = hp.freeze_backbone
        if hp.frozen_layers is not None:
            self.frozen_layers = hp.frozen_layers
        if hp.base_weights is not None:
            self.base_weights = hp.base_weights

    def preprocessing(self) -> dict[str, Any]:
        """The image size is the one setting that decides what a photo decodes to; it travels in the manifest."""
        return {IMAGE_SIZE: self.image_size}

    def for_preprocessing(self, params: Mapping[str, Any]) -> LaundryPlugin:
        """A copy decoding photos at the version's trained size (the server's own setting then does not matter)."""
        unknown = sorted(set(params) - {IMAGE_SIZE})
        if unknown:
            raise ValueError(
                f"unknown preprocessing parameter(s) {', '.join(unknown)} (LaundryPlugin takes {IMAGE_SIZE})"
            )
        size = params.get(IMAGE_SIZE, self.image_size)
        if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 1024:
            raise ValueError(f"preprocessing {IMAGE_SIZE} {size!r} must be a whole number of pixels, 32..1024")
        if size == self.image_size:
            return self
        other = copy.copy(self)
        other.image_size = size
        other.input_shape = (3, size, size)  # type: ignore[misc]
        return other

    def build(self) -> LaundryNet:
        return LaundryNet(self.arch, self.num_classes, self.freeze_backbone, self.frozen_layers)

    def initialise(self, net: nn.Module, store: ObjectStore) -> None:
        """Load the base weights, strictly for the backbone; the head is kept only if it has our classes."""
        if self.base_weights is None:
            return
        where = f"s3://{store.bucket}/{self.base_weights}"
        try:
            weights = load_safetensors(store.get_bytes(self.base_weights))
        except NotFound as e:
            raise ArtifactError(f"{where} ({ENV_BASE_WEIGHTS}) is missing: upload the base weights first") from e
        except (SafetensorError, ValueError) as e:
            raise ArtifactError(f"{where} is not a valid safetensors file ({e}); refusing to load it") from e
        load_base_weights(net, weights, where)

    def decode_bytes(self, raw: bytes) -> Tensor:
        """A PNG/JPEG (anything Pillow reads) as RGB in [0, 1], resized to the model's square size."""
        try:
            with Image.open(io.BytesIO(raw)) as img:
                if img.width * img.height > MAX_ENCODED_PIXELS:
                    raise InputError(f"image is {img.width}x{img.height}, over {MAX_ENCODED_PIXELS:,} pixels")
                rgb = img.convert("RGB")
                if rgb.size != (self.image_size, self.image_size):
                    rgb = rgb.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                data = bytearray(rgb.tobytes())
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise InputError(f"not a readable image ({e})") from e
        x = torch.frombuffer(data, dtype=torch.uint8).reshape(self.image_size, self.image_size, 3)
        return x.permute(2, 0, 1).float().div_(255.0).contiguous()

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Rotation ±15°, horizontal flip, brightness and contrast ±20%, per image.

        torchvision's v2 functional ops with parameters drawn from ``generator``: the v2 transform
        classes draw from the global RNG, which would make a resumed epoch differ.
        """
        out = []
        for img in x:
            angle, flip, bright, contrast = torch.rand(4, generator=generator).tolist()
            img = TF.rotate(img, angle=(2 * angle - 1) * MAX_ROTATION, interpolation=TF.InterpolationMode.BILINEAR)
            if flip < 0.5:
                img = TF.horizontal_flip(img)
            img = TF.adjust_brightness(img, 1 + (2 * bright - 1) * MAX_JITTER)
            img = TF.adjust_contrast(img, 1 + (2 * contrast - 1) * MAX_JITTER)
            out.append(img.clamp_(0.0, 1.0))
        return torch.stack(out)


def load_base_weights(net: nn.Module, weights: Mapping[str, Tensor], where: str) -> None:
    """Every backbone tensor must be present with its shape and nothing unknown may be left over;
    a head of another class count (ImageNet's 1000) is dropped and the new head stays as built."""
    own = net.state_dict()
    head = {k: v for k, v in weights.items() if k.startswith(HEAD)}
    keep_head = bool(head) and all(k in own and own[k].shape == v.shape for k, v in head.items())
    chosen: dict[str, Any] = {k: v for k, v in weights.items() if keep_head or not k.startswith(HEAD)}
    missing = sorted(k for k in own if k not in chosen and not (k.startswith(HEAD) and not keep_head))
    unexpected = sorted(k for k in chosen if k not in own)
    wrong = sorted(k for k in chosen if k in own and own[k].shape != chosen[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise ArtifactError(f"{where}: base weights do not fit this network ({'; '.join(parts)})")
    net.load_state_dict(chosen, strict=False)
