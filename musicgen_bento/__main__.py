"""`python -m musicgen_bento`: the node orchestrator's way to start the service."""

import sys

from .cli import main

sys.exit(main())
