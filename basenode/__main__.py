"""`python -m basenode` runs the command line, as the zipapp does."""

from .cli import main

raise SystemExit(main())
