"""`python -m rayfp.cli` = the `rayfp` command."""

import sys

from rayfp.cli.main import main

sys.exit(main())
