"""The laundry (ResNet) example plug-in: shapes, frozen backbone, base weights, decoding, augmentation."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from modelloop.api.artifacts import ArtifactError
from modelloop.api.retrainpolicy import Hyperparameters
from modelloop_trainer.examples.digits import DigitsPlugin
from modelloop_trainer.examples.laundry import LaundryPlugin, load_base_weights
from modelloop_trainer.plugin import InputError


def test_forward_gives_two_logits_per_image_for_both_architectures() -> None:
    for arch in ("resnet18", "resnet50"):
        plugin = LaundryPlugin(arch=arch, image_size=64)
        assert plugin.input_shape == (3, 64, 64)
        net = plugin.build().eval()
        with torch.inference_mode():
            assert net(torch.rand(2, 3, 64, 64)).shape == (2, 2)


def test_frozen_backbone_gets_no_gradients_and_keeps_its_batch_norm_statistics() -> None:
    net = LaundryPlugin(image_size=64, freeze_backbone=True).build()
    before = net.bn1.running_mean.clone()
    net.train()
    net(torch.rand(4, 3, 64, 64)).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None for n, g in grads.items() if n.startswith("fc."))
    assert all(g is None for n, g in grads.items() if not n.startswith("fc.")), "backbone must not train"
    assert torch.equal(net.bn1.running_mean, before)
    unfrozen = LaundryPlugin(image_size=64).build().train()
    unfrozen(torch.rand(4, 3, 64, 64)).sum().backward()
    assert unfrozen.conv1.weight.grad is not None


def test_imagenet_shaped_torchvision_weights_load_backbone_strictly_and_drop_the_1000_class_head() -> None:
    base = {k: v for k, v in resnet18(num_classes=1000).state_dict().items()}
    net = LaundryPlugin(image_size=64).build()
    head_before = net.fc.weight.clone()
    load_base_weights(net, base, "base.safetensors")
    assert torch.equal(net.conv1.weight, base["conv1.weight"])
    assert torch.equal(net.layer4[1].bn2.running_var, base["layer4.1.bn2.running_var"])
    assert torch.equal(net.fc.weight, head_before)

    two_class = resnet18(num_classes=2).state_dict()
    load_base_weights(net, two_class, "base.safetensors")
    assert torch.equal(net.fc.weight, two_class["fc.weight"]), "a head with our classes is kept"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda w: w.pop("layer1.0.conv1.weight"), "missing: layer1.0.conv1.weight"),
        (lambda w: w.__setitem__("extra.weight", torch.zeros(1)), "unexpected: extra.weight"),
        (lambda w: w.__setitem__("conv1.weight", torch.zeros(1)), "wrong shape: conv1.weight"),
    ],
)
def test_base_weights_that_do_not_fit_are_refused_naming_the_tensor(edit: object, message: str) -> None:
    weights = dict(resnet18(num_classes=1000).state_dict())
    edit(weights)  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=message):
        load_base_weights(LaundryPlugin(image_size=64).build(), weights, "s3://b/base.safetensors")
    with pytest.raises(ArtifactError):
        load_base_weights(LaundryPlugin(arch="resnet50", image_size=64).build(), resnet18().state_dict(), "x")


def test_png_and_jpeg_decode_to_rgb_in_unit_range_at_the_model_size() -> None:
    plugin = LaundryPlugin(image_size=32)
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "L"), ("PNG", "RGBA")):
        buf = io.BytesIO()
        Image.new(mode, (50, 40), color=200 if mode == "L" else (255, 0, 0, 255)[: len(mode)]).save(buf, format=fmt)
        x = plugin.decode_bytes(buf.getvalue())
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert float(x.min()) >= 0 and float(x.max()) <= 1
    red = plugin.decode_bytes(_png((255, 0, 0)))
    assert float(red[0].mean()) == 1.0 and float(red[1:].max()) == 0.0
    with pytest.raises(InputError, match="not a readable image"):
        plugin.decode_bytes(b"definitely not a picture")
    assert plugin.preprocess([red.tolist()]).shape == (1, 3, 32, 32)


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_augmentation_is_reproducible_from_the_generator_and_stays_in_range() -> None:
    plugin = LaundryPlugin(image_size=32)
    x = torch.rand(4, 3, 32, 32)
    a = plugin.augment(x, torch.Generator().manual_seed(1))
    b = plugin.augment(x, torch.Generator().manual_seed(1))
    c = plugin.augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1


def test_settings_come_from_the_environment_and_bad_ones_are_named() -> None:
    plugin = LaundryPlugin(
        env={
            "MODELLOOP_LAUNDRY_ARCH": "resnet50",
            "MODELLOOP_LAUNDRY_IMAGE_SIZE": "96",
            "MODELLOOP_LAUNDRY_FREEZE_BACKBONE": "true",
            "MODELLOOP_LAUNDRY_BASE_WEIGHTS": "base/resnet50.safetensors",
        }
    )
    assert (plugin.arch, plugin.input_shape, plugin.freeze_backbone) == ("resnet50", (3, 96, 96), True)
    assert plugin.base_weights == "base/resnet50.safetensors"
    assert LaundryPlugin(env={}).input_shape == (3, 224, 224)
    with pytest.raises(ValueError, match="MODELLOOP_LAUNDRY_ARCH='vgg'"):
        LaundryPlugin(env={"MODELLOOP_LAUNDRY_ARCH": "vgg"})
    with pytest.raises(ValueError, match="MODELLOOP_LAUNDRY_IMAGE_SIZE=8"):
        LaundryPlugin(env={"MODELLOOP_LAUNDRY_IMAGE_SIZE": "8"})
    with pytest.raises(ValueError, match="MODELLOOP_LAUNDRY_FREEZE_BACKBONE='maybe'"):
        LaundryPlugin(env={"MODELLOOP_LAUNDRY_FREEZE_BACKBONE": "maybe"})


@pytest.mark.parametrize(
    ("frozen_layers", "trained_first"),
    [(0, "conv1"), (1, "layer1"), (2, "layer2"), (3, "layer3"), (4, "layer4"), (5, "fc")],
)
def test_frozen_layers_freeze_the_backbone_stages_from_the_input_side(frozen_layers: int, trained_first: str) -> None:
    plugin = LaundryPlugin(image_size=64)
    plugin.configure(Hyperparameters.model_validate({"frozenLayers": frozen_layers}))
    net = plugin.build().train()
    order = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    trainable = {n.split(".", 1)[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(order[order.index(trained_first) :])
    frozen_bn = [m for name in order[: order.index(trained_first)] for m in getattr(net, name).modules()]
    assert all(not m.training for m in frozen_bn), "frozen stages keep their batch-norm statistics"


def test_policy_hyperparameters_override_the_environment() -> None:
    env = {"MODELLOOP_LAUNDRY_IMAGE_SIZE": "224", "MODELLOOP_LAUNDRY_FREEZE_BACKBONE": "false"}
    plugin = LaundryPlugin(env=env)
    plugin.configure(Hyperparameters.model_validate({"imageSize": 96, "freezeBackbone": True}))
    assert plugin.input_shape == (3, 96, 96) and plugin.image_size == 96
    assert plugin.decode_bytes(_png((200, 10, 10))).shape == (3, 96, 96)
    assert {n for n, p in plugin.build().named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    untouched = LaundryPlugin(env=env)
    untouched.configure(Hyperparameters())
    assert untouched.input_shape == (3, 224, 224) and not untouched.freeze_backbone


def test_the_image_size_travels_as_preprocessing_and_a_copy_takes_it_back() -> None:
    trained = LaundryPlugin(image_size=48, env={})
    assert trained.preprocessing() == {"imageSize": 48}
    serving = LaundryPlugin(env={})  # 224 by default
    assert serving.for_preprocessing({}) is serving and serving.for_preprocessing({"imageSize": 224}) is serving
    copy = serving.for_preprocessing(trained.preprocessing())
    assert copy is not serving and copy.input_shape == (3, 48, 48) and serving.input_shape == (3, 224, 224)
    assert copy.decode_bytes(_png((10, 200, 10))).shape == (3, 48, 48)
    for bad, message in (({"imageSize": 8}, "32..1024"), ({"imageSize": "64"}, "32..1024"), ({"mean": 1}, "mean")):
        with pytest.raises(ValueError, match=message):
            serving.for_preprocessing(bad)


def test_a_plugin_without_preprocessing_refuses_a_manifest_that_asks_for_some() -> None:
    digits = DigitsPlugin()
    assert digits.preprocessing() == {} and digits.for_preprocessing({}) is digits
    with pytest.raises(ValueError, match=r"DigitsPlugin has no preprocessing parameters .*imageSize"):
        digits.for_preprocessing({"imageSize": 64})
