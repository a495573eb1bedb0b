"""``python -m fastnum.cli`` runs the command line, as ``python -m fastnum`` does."""

from fastnum.cli import main

raise SystemExit(main())
