"""``python -m vqgan.cli``: the same as the ``vqgan`` command."""

from vqgan.cli import main

raise SystemExit(main())
