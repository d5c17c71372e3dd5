"""`python -m robotstack.cli ...` (used by tests, torchrun and the demo to start real processes)."""

import sys

from robotstack.cli import main

sys.exit(main())
