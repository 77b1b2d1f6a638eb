"""``python -m pybootd``."""

from pybootd.cli import main

raise SystemExit(main())
