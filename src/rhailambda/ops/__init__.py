"""Day-to-day operation: dead letters (``rhailambda dlq``), task inspection
(``rhailambda task show``) and the local script runner (``rhailambda run``).

:mod:`rhailambda.ops.cli` registers the subcommands; the Redis side of each lives in
its own module (:mod:`~rhailambda.ops.dlq`, :mod:`~rhailambda.ops.inspect`), the runner
in :mod:`~rhailambda.ops.run`. Every command works on a Redis Cluster: each script
touches the keys of one slot (the dead-letter list and queue share the queue's slot,
a task hash and its done marker the task's, the reply and its sent marker the reply's).
"""
