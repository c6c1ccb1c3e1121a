"""`python -m services.cli` is the `llc` command (for environments without the console script)."""
import sys

from services.cli import main

sys.exit(main())
