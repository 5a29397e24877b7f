"""What a training run reports about itself: ``metrics.json`` and ``training-curve.png``.

The verifier reads ``validationAccuracy`` back from metrics.json; people read the rest.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .checkpoints import History


class TrainingMetrics(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    epochs_run: int = Field(alias="epochsRun", ge=0)
    best_epoch: int = Field(alias="bestEpoch", ge=0)
    stopped_early: bool = Field(alias="stoppedEarly")
    resumed_from_epoch: int | None = Field(default=None, alias="resumedFromEpoch")
    train_loss: list[float] = Field(alias="trainLoss", description="Per epoch, index 0 is epoch 1.")
    validation_loss_curve: list[float] = Field(alias="validationLossCurve")
    validation_accuracy_curve: list[float] = Field(alias="validationAccuracyCurve")
    epoch_seconds: list[float] = Field(
        alias="epochSeconds", description="Wall time per epoch incl. progress and checkpoint hand-off."
    )
    validation_loss: float = Field(alias="validationLoss", description="Of the published (best) weights.")
    validation_accuracy: float = Field(alias="validationAccuracy", ge=0, le=1)
    per_class_accuracy: dict[str, float] = Field(alias="perClassAccuracy")
    per_class_precision: dict[str, float] = Field(
        default_factory=dict,
        alias="perClassPrecision",
        description="By class name, on the validation split: of the samples predicted as the class, the share truly of it.",
    )
    per_class_recall: dict[str, float] = Field(
        default_factory=dict,
        alias="perClassRecall",
        description="By class name, on the validation split: of the class's samples, the share predicted as it.",
    )
    macro_f1: float = Field(alias="macroF1")
    confusion_matrix: list[list[int]] = Field(
        alias="confusionMatrix", description="Rows: true class; columns: predicted."
    )
    train_samples: int = Field(alias="trainSamples")
    feedback_samples: int = Field(
        default=0,
        alias="feedbackSamples",
        ge=0,
        description="Reviewed samples (confirmations and corrections) added to the base dataset, before the "
        "train/validation split.",
    )
    feedback_corrections: int = Field(
        default=0, alias="feedbackCorrections", ge=0, description="Of those, the corrections."
    )
    feedback_by_reference: int = Field(
        default=0,
        alias="feedbackByReference",
        ge=0,
        description="Of those, the ones whose input was streamed from its s3:// reference (images), stored inline "
        "inputs included.",
    )
    feedback_stored_inline: int = Field(
        default=0,
        alias="feedbackStoredInline",
        ge=0,
        description="Of those, the ones whose input was sent inline and stored by the server under "
        "<model>/inline-inputs/.",
    )
    feedback_skipped: dict[str, int] = Field(
        default_factory=dict,
        alias="feedbackSkipped",
        description="Reviews not trained on, by reason (inlineInputNotStored: an image sent inline that the "
        "server did not store; inputKnownByDigestOnly: an input kept as a digest only; referenceOutsideBucket; labelNotAClass; inputDoesNotFit; referenceButPluginTakesNumbers).",
    )
    validation_samples: int = Field(alias="validationSamples")
    device: str
    world_size: int = Field(alias="worldSize")
    duration_seconds: float = Field(
        alias="durationSeconds", description="This process's wall time (after a resume: since the resume)."
    )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, indent=2).encode()


def plot_curves(history: History, best_epoch: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = list(range(1, len(history.train_loss) + 1))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        ax_loss.plot(epochs, history.train_loss, label="train loss")
        ax_loss.plot(epochs, history.validation_loss, label="validation loss")
        if best_epoch:
            ax_loss.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("cross-entropy")
        ax_loss.legend()
        ax_acc.plot(epochs, history.validation_accuracy, label="validation accuracy", color="tab:green")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylim(0, 1)
        ax_acc.legend()
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
    finally:
        plt.close(fig)
