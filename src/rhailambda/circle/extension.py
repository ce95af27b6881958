"""The circle extension: built once per cold start, one session per task.

Wiring (in the function, once per cold start)::

    from rhailambda.circle import CircleExtension
    circle = CircleExtension.from_env(Env(os.environ))   # builds the store client
    session = circle.open(ScriptContext(caller_id, context_id, worker_id, task_id))

``rhailambda.circle:extension_from_env`` is the same factory in the
``RHAILAMBDA_EXTENSIONS`` spelling (``factory(env) -> Extension``): the default first
entry of the function's extension list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from rhailambda.circle.errors import InvalidArgument
from rhailambda.circle.names import check_context
from rhailambda.circle.redis_store import RedisCircleStore
from rhailambda.circle.session import CircleSession
from rhailambda.circle.settings import CircleSettings, Limits
from rhailambda.circle.store import CircleStore
from rhailambda.extension import Receipt, ScriptContext
from rhailambda.resp import from_url
from rhailambda.settings import Env

__all__ = ["CircleExtension", "build_store", "extension_from_env"]


class CircleExtension:
    """The extension giving scripts ``db::`` and ``circle::`` functions."""

    name = "circle"

    def __init__(self, store: CircleStore, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits or Limits()

    def open(self, ctx: ScriptContext) -> CircleSession:
        return CircleSession(self.store, ctx, self.limits)

    def recall(self, tasks: Sequence[ScriptContext]) -> list[Receipt | None]:
        """The receipts of these tasks' committed writes (one store call for all)."""
        valid = [i for i, ctx in enumerate(tasks) if _has_circle(ctx)]
        found = self.store.receipts([(tasks[i].context_id, tasks[i].task_id) for i in valid])
        receipts: list[Receipt | None] = [None] * len(tasks)
        for i, receipt in zip(valid, found, strict=True):
            receipts[i] = receipt
        return receipts

    @classmethod
    def from_settings(cls, settings: CircleSettings) -> CircleExtension:
        return cls(build_store(settings), settings.limits)

    @classmethod
    def from_env(cls, env: Env) -> CircleExtension:
        return cls.from_settings(CircleSettings.from_env(env))


def build_store(settings: CircleSettings) -> CircleStore:
    """The store client the settings ask for (no I/O until the first call)."""
    if settings.backend == "dynamodb":
        import boto3  # only deployments on DynamoDB need it (and pay its import)

        from rhailambda.circle.dynamo_store import DynamoCircleStore, DynamoClient

        client = boto3.client(
            "dynamodb", endpoint_url=settings.endpoint_url, region_name=settings.region
        )
        assert settings.table is not None  # CircleSettings checks it
        return DynamoCircleStore(
            cast(DynamoClient, client), settings.table, receipt_ttl_s=settings.receipt_ttl_s
        )
    return RedisCircleStore(
        from_url(settings.redis_url), settings.layout, receipt_ttl_s=settings.receipt_ttl_s
    )


def _has_circle(ctx: ScriptContext) -> bool:
    """Whether the task names a circle a session could have committed to."""
    try:
        check_context(ctx.context_id)
    except InvalidArgument:
        return False
    return True


def extension_from_env(env: Env) -> CircleExtension:
    """``RHAILAMBDA_EXTENSIONS`` factory: the circle extension configured from ``env``."""
    return CircleExtension.from_env(env)
