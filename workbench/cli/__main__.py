"""`python -m workbench.cli`: how the workbench starts its own run workers and sweeps."""

import sys

from workbench.cli import main

sys.exit(main())
