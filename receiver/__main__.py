"""`python -m receiver` is the `fluxback` command."""

from receiver.cli import main

raise SystemExit(main())
