"""The model plug-in interface: everything model-specific the trainer, verifier and server need.

A team points ``spec.training.plugin`` at ``package.module:Class``; the trainer imports it with
:func:`load_plugin`. The server imports this same module to build the network and to validate
request bodies with :meth:`ModelPlugin.preprocess`, so a request the server accepts is exactly
an input the trainer can learn from as feedback.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from modelloop.api.feedback import FeedbackRecord
from modelloop.api.retrainpolicy import Hyperparameters
from modelloop.clients.objectstore import NotFound, ObjectStore

from .inference import Optimised, optimise
from .metrics import Evaluation, evaluate_logits


class InputError(ValueError):
    """An input does not fit the model (shape, dtype, range); the message says which and why."""


class DatasetError(ValueError):
    """A dataset file in the bucket is missing or malformed; the message names the object."""


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (float32, ``[N, *input_shape]``) and class labels ``y`` (int64, ``[N]``)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def concat(self, other: Split) -> Split:
        return Split(torch.cat([self.x, other.x]), torch.cat([self.y, other.y]))

    def subset(self, index: Tensor) -> Split:
        return Split(self.x[index], self.y[index])


class ModelPlugin(ABC):
    """One model family. Subclasses set the class attributes and implement :meth:`build`."""

    input_shape: ClassVar[tuple[int, ...]]
    num_classes: ClassVar[int]
    class_names: ClassVar[tuple[str, ...]]
    # Inclusive bounds on every input value; None accepts any finite number.
    value_range: ClassVar[tuple[float, float] | None] = None
    # Serve convolutions channels-last (see for_inference): faster for image-sized inputs, slower for tiny ones.
    channels_last: ClassVar[bool] = False

    @abstractmethod
    def build(self) -> nn.Module:
        """A freshly initialised network mapping preprocess()'s output to ``[N, num_classes]`` logits."""

    def configure(self, hp: Hyperparameters) -> None:
        """Take the model-shaping hyperparameters of the policy (image size, frozen layers); the trainer
        and verifier call it before :meth:`build`. The default ignores them."""
        return None

    def preprocessing(self) -> dict[str, Any]:
        """The parameters that turn a client's input into the network's (an image size, say), as this
        plug-in is configured. The trainer writes them into the version's manifest
        (``preprocessing``) and the server reads them back with :meth:`for_preprocessing` when it loads
        the version, so a version is always served with the preprocessing it was trained with. The
        default has none: the input is the network's input."""
        return {}

    def for_preprocessing(self, params: Mapping[str, Any]) -> ModelPlugin:
        """This plug-in as it must preprocess for a version whose manifest says ``params``: itself when they
        match its own, else a configured copy (never changed in place: other versions may be loaded beside).

        Raises ValueError naming what it cannot take; the server then refuses the version. The default
        takes only its own parameters.
        """
        params = dict(params)
        if not params or params == self.preprocessing():
            return self
        raise ValueError(
            f"plug-in {type(self).__name__} has no preprocessing parameters to set, and the version's manifest "
            f"asks for {params}; was it trained with another plug-in?"
        )

    def for_inference(self, net: nn.Module) -> Optimised:
        """The loaded network (eval mode, gradients off) as it answers requests, with the same outputs.

        The server's loader and the verifier both call this, so the verifier's latency probe times
        the network that serves. The default folds batch norms into convolutions and, where the plug-in
        sets ``channels_last``, runs convolutions channels-last (see
        :mod:`modelloop_trainer.inference`), keeping a
        rewrite only when its probabilities match the eager network's; a plug-in may do more or
        return ``Optimised(net, ())`` to serve its network as built.
        """
        return optimise(net, self.input_shape, self.channels_last)

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Training-time augmentation; must draw randomness only from ``generator`` (resumability)."""
        return x

    def base_dataset(self) -> tuple[Split, Split]:
        """(train, holdout) for ``modelloop-trainer seed-dataset``; plug-ins with their own data skip it."""
        raise NotImplementedError(f"{type(self).__name__} has no bundled dataset; upload train/holdout yourself")

    def preprocess(self, batch: Sequence[Any]) -> Tensor:
        """Validate raw inputs (JSON lists) and stack them into a float32 ``[N, *input_shape]`` tensor.

        Each item may be flat (``prod(input_shape)`` numbers) or nested in ``input_shape``. The
        server calls this on request bodies, so every rejection names the item and the reason.
        """
        if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence):
            raise InputError(f"expected a list of inputs, got {type(batch).__name__}")
        if len(batch) == 0:
            raise InputError("expected at least one input, got an empty list")
        flat = math.prod(self.input_shape)
        rows = []
        for i, item in enumerate(batch):
            try:
                arr = np.asarray(item)
            except ValueError as e:
                raise InputError(f"input {i}: not a rectangular array of numbers ({e})") from e
            if arr.dtype.kind not in "iuf":
                raise InputError(f"input {i}: values must be numbers, got dtype {arr.dtype}")
            if arr.shape not in (self.input_shape, (flat,)):
                raise InputError(
                    f"input {i}: shape {tuple(arr.shape)} does not match the model's input shape "
                    f"{self.input_shape} (or {flat} numbers flat)"
                )
            with np.errstate(over="ignore"):  # a value past float32's range becomes inf, refused just below
                arr = arr.astype(np.float32).reshape(self.input_shape)
            if not np.isfinite(arr).all():
                raise InputError(f"input {i}: contains NaN, infinity or a value beyond float32's range (±3.4e38)")
            if self.value_range is not None:
                lo, hi = self.value_range
                if arr.min() < lo or arr.max() > hi:
                    raise InputError(
                        f"input {i}: values must lie in [{lo:g}, {hi:g}], got [{arr.min():g}, {arr.max():g}]"
                    )
            rows.append(arr)
        return torch.from_numpy(np.stack(rows))

    def decode_bytes(self, raw: bytes) -> Tensor:
        """One encoded input (an image file's bytes, say) as a ``[*input_shape]`` tensor for :meth:`preprocess`.

        The server calls it for BYTES inputs of the Open Inference Protocol. The default returns
        ``NotImplemented``: the model takes numbers only, and the server answers BYTES with a 400
        saying so. A plug-in that decodes raises :class:`InputError` for bytes it cannot read.
        """
        return NotImplemented  # type: ignore[no-any-return]

    def decode_feedback(self, records: Sequence[FeedbackRecord]) -> Split:
        """Reviewed inputs with the reviewer's label, as a training split."""
        x = self.preprocess([r.input for r in records])
        for r in records:
            if r.label >= self.num_classes:
                raise InputError(f"feedback {r.id}: label {r.label} is not a class (0..{self.num_classes - 1})")
        return Split(x, torch.tensor([r.label for r in records], dtype=torch.int64))

    def load_split(self, store: ObjectStore, dataset: str, split: str) -> Split:
        """``<dataset>/<split>.safetensors`` with tensors ``x`` and ``y``; checked, never unpickled."""
        key = f"{dataset.rstrip('/')}/{split}.safetensors"
        where = f"s3://{store.bucket}/{key}"
        try:
            raw = store.get_bytes(key)
        except NotFound as e:
            raise DatasetError(f"{where} is missing: seed the dataset first (modelloop-trainer seed-dataset)") from e
        try:
            tensors = load_safetensors(raw)
        except (SafetensorError, ValueError) as e:
            raise DatasetError(f"{where} is not a valid safetensors file: {e}") from e
        return self.check_split(tensors, where)

    def check_split(self, tensors: dict[str, Tensor], where: str) -> Split:
        if set(tensors) != {"x", "y"}:
            raise DatasetError(f"{where}: expected tensors x and y, found {sorted(tensors)}")
        x, y = tensors["x"], tensors["y"]
        if x.dtype != torch.float32 or y.dtype != torch.int64:
            raise DatasetError(f"{where}: expected x float32 and y int64, found {x.dtype} and {y.dtype}")
        flat = math.prod(self.input_shape)
        if x.ndim < 1 or x.shape[0] != y.shape[0] or y.ndim != 1:
            raise DatasetError(f"{where}: x has shape {tuple(x.shape)} and y {tuple(y.shape)}; need [N, ...] and [N]")
        if tuple(x.shape[1:]) not in (self.input_shape, (flat,)):
            raise DatasetError(f"{where}: samples have shape {tuple(x.shape[1:])}, the model takes {self.input_shape}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DatasetError(f"{where}: labels outside 0..{self.num_classes - 1}")
        return Split(x.reshape(-1, *self.input_shape).contiguous(), y)

    def evaluate(self, model: nn.Module, split: Split, batch_size: int = 512) -> Evaluation:
        """Loss, accuracy, per-class accuracy, macro F1 and confusion matrix of ``model`` on ``split``."""
        model.eval()
        device = next(model.parameters()).device
        with torch.inference_mode():
            logits = torch.cat(
                [model(split.x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(split), batch_size)]
            )
        return evaluate_logits(logits, split.y, self.num_classes)


def load_plugin(ref: str) -> ModelPlugin:
    """Instantiate ``package.module:Class`` (a :class:`ModelPlugin` subclass with a no-argument constructor)."""
    module_name, sep, class_name = ref.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"plug-in reference {ref!r} must look like 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"plug-in {ref!r}: cannot import module {module_name!r} ({e}); is it installed in the image?"
        ) from e
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelPlugin)):
        raise ValueError(
            f"plug-in {ref!r}: {module_name}.{class_name} is not a modelloop_trainer.plugin.ModelPlugin subclass"
        )
    return cls()


def split_to_bytes(split: Split) -> bytes:
    """The dataset file format (safetensors with ``x`` and ``y``)."""
    return save_safetensors({"x": split.x.contiguous(), "y": split.y.contiguous()})
