"""modelloop: a Kubernetes operator for continuous model retraining.

Layers (lower never imports higher; `make lint` checks it with import-linter):
``api`` (models, contracts) < ``decide`` (pure decisions) < ``clients`` (the only I/O)
< ``handlers`` (kopf). The trainer and server images import ``api`` and ``clients`` only.
"""

__version__ = "0.1.0"
