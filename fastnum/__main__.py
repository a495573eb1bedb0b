"""``python -m fastnum`` runs the command-line interface."""

from fastnum.cli import main

raise SystemExit(main())
