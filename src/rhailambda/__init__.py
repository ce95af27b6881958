"""rhailambda: run Rhai scripts for many tenants on serverless infrastructure."""

from rhailambda.protocol import KeyLayout, normalize_worker_id

__all__ = ["KeyLayout", "normalize_worker_id"]
__version__ = "0.1.0"
