"""``python -m rhailambda.shim shim|status|pause|resume ...``."""

import sys

from rhailambda.shim.cli import main

sys.exit(main())
