"""A small fake of Lambda's context object: what the handlers and Powertools read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeContext:
    remaining_ms: int = 30_000
    function_name: str = "script-function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:script-function"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
