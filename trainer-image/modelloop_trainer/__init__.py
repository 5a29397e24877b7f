"""The trainer image: ``modelloop-trainer train | verify | seed-dataset``.

Run by the operator's training and verification Jobs (see docs/contracts.md for the env vars);
the model itself comes from a plug-in (:mod:`modelloop_trainer.plugin`).
"""
