"""``python -m modelloop_trainer`` is the same program as the ``modelloop-trainer`` script."""

from modelloop_trainer.cli import main

raise SystemExit(main())
