"""`python -m replwatch.compare --source URL --target URL …`: the compare without the rest
of the replwatch CLI."""

from __future__ import annotations

import sys

from replwatch.compare.cli import main

sys.exit(main())
