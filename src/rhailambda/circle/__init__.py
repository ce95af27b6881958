"""Circle data for scripts: records in collections and members of the task's circle.

Scripts get ``db::save/get/delete/list/find`` and ``circle::members/add_member/
remove_member`` (see "Circle data" in the project README). Only ``CONTEXT_ID``'s data is
reachable; the owner and members may read and write, only the owner changes the
member list. Writes are staged and committed atomically after the script succeeds,
with optimistic concurrency (a conflict makes the function run the script again).

The function builds the extension once per cold start::

    circle = rhailambda.circle.CircleExtension.from_env(env)   # or extension_from_env(env)
"""

from __future__ import annotations

from rhailambda.circle.errors import (
    CircleError,
    CommitTooLarge,
    InsufficientAuthorization,
    InvalidArgument,
    StoreConflict,
    StoreError,
    TaskCommitted,
)
from rhailambda.circle.extension import (
    CircleExtension,
    build_store,
    extension_from_env,
)
from rhailambda.circle.session import CircleSession
from rhailambda.circle.settings import CircleSettings, Limits
from rhailambda.circle.store import CircleStore

__all__ = [
    "CircleError",
    "CircleExtension",
    "CircleSession",
    "CircleSettings",
    "CircleStore",
    "CommitTooLarge",
    "InsufficientAuthorization",
    "InvalidArgument",
    "Limits",
    "StoreConflict",
    "StoreError",
    "TaskCommitted",
    "build_store",
    "extension_from_env",
]
