"""The shim's flags: each with its environment variable and help (``rhailambda shim --help``).

Read by :func:`rhailambda.shim.settings.add_arguments`; a flag given wins over its
variable, and a variable over the default written in the settings dataclasses.
"""

__all__ = ["DEFAULT_HANDLER", "OPTIONS"]

DEFAULT_HANDLER = "rhailambda.functions.handler.handler"

# (flag, variable, help). The flag's dest is the variable lower-cased.
OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--redis-url", "REDIS_URL", "Redis URL (redis://, rediss://, unix://)"),
    ("--worker", "RHAILAMBDA_WORKERS", "a worker id to drain (repeat, or a comma list)"),
    ("--backend", "RHAILAMBDA_BACKEND", "local | lambda (default local)"),
    (
        "--shim-id",
        "RHAILAMBDA_SHIM_ID",
        "this shim's id; a restart with the same id "
        "recovers its in-flight tasks at once (default: host-pid-random)",
    ),
    (
        "--batch-size",
        "RHAILAMBDA_BATCH_SIZE",
        "tasks per invocation, 1 to 10000 (default: local 100, lambda 10)",
    ),
    (
        "--batch-window-ms",
        "RHAILAMBDA_BATCH_WINDOW_MS",
        "wait up to this long to fill a batch on a busy queue, 0 to 300000 (default 0)",
    ),
    (
        "--max-concurrency",
        "RHAILAMBDA_MAX_CONCURRENCY",
        "invocations at once, all queues, 1 to 10000 (default: local workers)",
    ),
    (
        "--per-queue-concurrency",
        "RHAILAMBDA_PER_QUEUE_CONCURRENCY",
        "invocations at once per queue, 1 to 10000 (default: max concurrency)",
    ),
    ("--fair-share", "RHAILAMBDA_FAIR_SHARE", "circles share each queue in turns (default true)"),
    (
        "--fair-window",
        "RHAILAMBDA_FAIR_WINDOW",
        "ids read ahead per queue for fair share, batch size to 1000000 (default 50000)",
    ),
    (
        "--per-circle-concurrency",
        "RHAILAMBDA_PER_CIRCLE_CONCURRENCY",
        "tasks of one circle running at once, 1 to 1000000 (default: no cap)",
    ),
    (
        "--per-circle-rate",
        "RHAILAMBDA_PER_CIRCLE_RATE",
        "tasks of one circle started per second, 0.001 to 1000000 (default: no cap)",
    ),
    (
        "--tenant-isolation",
        "RHAILAMBDA_TENANT_ISOLATION",
        "every batch from one circle, invoked as that tenant (default false)",
    ),
    (
        "--max-attempts",
        "RHAILAMBDA_MAX_ATTEMPTS",
        "deliveries before dead-lettering, 1 to 1000 (default 3)",
    ),
    (
        "--max-task-age-s",
        "RHAILAMBDA_MAX_TASK_AGE_S",
        "dead-letter tasks created longer ago than this, up to 31536000 (default: no limit)",
    ),
    (
        "--backoff-base-s",
        "RHAILAMBDA_BACKOFF_BASE_S",
        "retry backoff base, 0.001 to 3600 (default 0.5)",
    ),
    (
        "--backoff-cap-s",
        "RHAILAMBDA_BACKOFF_CAP_S",
        "retry backoff cap, base to 86400 (default 30)",
    ),
    (
        "--function-timeout-s",
        "RHAILAMBDA_FUNCTION_TIMEOUT_S",
        "the function's time budget per invocation, 0.1 to 900 (default 30)",
    ),
    ("--function-name", "RHAILAMBDA_FUNCTION_NAME", "Lambda function name or ARN"),
    ("--handler", "RHAILAMBDA_HANDLER", f"handler import path (default {DEFAULT_HANDLER})"),
    (
        "--local-workers",
        "RHAILAMBDA_LOCAL_WORKERS",
        "local worker processes, 1 to 1024 (default: CPUs)",
    ),
    (
        "--idle-timeout-s",
        "RHAILAMBDA_IDLE_TIMEOUT_S",
        "retire local workers idle this long, 0.1 to 86400 (default 300)",
    ),
    (
        "--shutdown-timeout-s",
        "RHAILAMBDA_SHUTDOWN_TIMEOUT_S",
        "on SIGTERM, wait this long for in-flight invocations, 0 to 3600 (default 30)",
    ),
    (
        "--lease-s",
        "RHAILAMBDA_LEASE_S",
        "shim lease; renewed every third of it, 1 to 3600 (default 30)",
    ),
    ("--block-s", "RHAILAMBDA_BLOCK_S", "BLMOVE block on an empty queue, 0.1 to 300 (default 20)"),
    (
        "--isolate-circles",
        "RHAILAMBDA_ISOLATE_CIRCLES",
        "local backend: a worker process serves one circle and no other (default off)",
    ),
    ("--log-level", "RHAILAMBDA_LOG_LEVEL", "DEBUG, INFO, WARNING (default INFO)"),
    ("--log-format", "RHAILAMBDA_LOG_FORMAT", "json | text (default json unless on a terminal)"),
    (
        "--metrics-port",
        "RHAILAMBDA_METRICS_PORT",
        "serve Prometheus /metrics and /healthz, /readyz on this port, 1 to 65535 (default: off)",
    ),
    ("--metrics-host", "RHAILAMBDA_METRICS_HOST", "address of --metrics-port (default 127.0.0.1)"),
    (
        "--metrics-emf",
        "RHAILAMBDA_METRICS_EMF",
        "true: CloudWatch Embedded Metric Format lines on stdout (default false)",
    ),
    (
        "--metrics-interval-s",
        "RHAILAMBDA_METRICS_INTERVAL_S",
        "EMF publishing period, 1 to 3600 (default 60)",
    ),
)
