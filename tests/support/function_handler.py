"""The Lambda handler module loaded afresh for a test's environment, and closed after."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


@contextmanager
def fresh_handler() -> Iterator[ModuleType]:
    """``rhailambda.functions.handler`` re-imported (its settings and clients are built at
    import, from the environment as the test set it), its Redis connections closed after.

    The module keeps its client for the life of the sandbox, as Lambda wants: nothing
    public closes it, so this reaches through the runner to its task store's client.
    """
    import rhailambda.functions.handler as handler_module

    module = importlib.reload(handler_module)
    try:
        yield module
    finally:
        module.RUNNER._store._client.close()
        for ext in module.RUNNER._extensions:  # the circle store's own client
            client = getattr(getattr(ext, "store", None), "_client", None)
            if client is not None and callable(getattr(client, "close", None)):
                client.close()
