"""``python -m tariti_mcp``: the same as the ``tariti-mcp`` command."""

from .cli import main

raise SystemExit(main())
