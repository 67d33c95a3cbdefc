"""``python -m castore``: the same as the ``castore`` command."""

from castore.cli.main import main

raise SystemExit(main())
