"""Example plug-ins bundled with the trainer; teams copy one and point ``spec.training.plugin`` at theirs."""
