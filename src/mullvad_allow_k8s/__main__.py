"""`python3 -m mullvad_allow_k8s` runs the CLI."""

from .cli import main

raise SystemExit(main())
