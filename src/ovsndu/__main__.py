"""``python -m ovsndu``: the command line."""

from ovsndu.cli import main

raise SystemExit(main())
