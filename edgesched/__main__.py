"""`python -m edgesched` is the same program as the `edgesched` command."""

from edgesched.cli import main

raise SystemExit(main())
