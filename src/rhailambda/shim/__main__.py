"""``python -m rhailambda.shim shim|status|pause|resume ...``: the ``rhailambda`` command."""

import sys

from rhailambda.cli import main

sys.exit(main())
