"""``python -m rhailambda ...``: the ``rhailambda`` command."""

import sys

from rhailambda.cli import main

sys.exit(main())
