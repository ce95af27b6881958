"""The ``rhailambda`` command: ``shim``, ``status``, ``submit`` (and the shim's pause switches).

Every flag also comes from the environment (``REDIS_URL``, ``RHAILAMBDA_*``), read
once here at the edge; a bad value exits 2 with the setting's name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, cast

from rhailambda.errors import InvalidIdError, ReplyTimeoutError, RhailambdaError, SettingError
from rhailambda.ops.script_file import read_script as _read_script
from rhailambda.settings import DEFAULT_REDIS_URL, Env, ProtocolSettings, RedisSettings

__all__ = ["main"]


def _add_submit(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = Env(os.environ)
    sub = subparsers.add_parser(
        "submit",
        help="submit a script as a task (the rhai_dispatcher way)",
        description="Write the task hash, push its id on the worker queue, optionally wait.",
    )
    workers = env.list("RHAILAMBDA_WORKERS")

    def from_env(flag: str, var: str, help_text: str, default: str | None = None) -> None:
        value = env.optional_str(var) or default
        sub.add_argument(flag, default=value, required=value is None, help=f"{help_text} [{var}]")

    sub.add_argument(
        "--redis-url", default=None, help=f"Redis URL [REDIS_URL] ({DEFAULT_REDIS_URL})"
    )
    from_env("--worker", "RHAILAMBDA_WORKER", "worker queue id (default: the first of "
             "RHAILAMBDA_WORKERS)", workers[0] if workers else None)  # fmt: skip
    from_env("--context", "RHAILAMBDA_CONTEXT_ID", "circle (context) id")
    sub.add_argument(
        "--caller",
        default=env.optional_str("RHAILAMBDA_CALLER_ID"),
        help="caller id (with --key: the key's public key) [RHAILAMBDA_CALLER_ID]",
    )
    sub.add_argument("--key", type=Path, default=env.optional_str("RHAILAMBDA_KEY_FILE"),
                     help="sign the task with this key file (rhailambda keygen) "
                     "[RHAILAMBDA_KEY_FILE]")  # fmt: skip
    sub.add_argument("--task-id", default=None, help="task id (default: a new UUID)")
    src = sub.add_mutually_exclusive_group(required=True)
    src.add_argument("--script", help="the Rhai source")
    src.add_argument("file", nargs="?", type=Path, help="a file holding the Rhai source")
    sub.add_argument("--wait", action="store_true", help="wait for the reply and print it")
    sub.add_argument(
        "--timeout",
        type=float,
        default=env.float("RHAILAMBDA_WAIT_TIMEOUT_S", 30.0, minimum=0.0),
        help="seconds to wait with --wait [RHAILAMBDA_WAIT_TIMEOUT_S]",
    )
    sub.set_defaults(func=_submit)


def _submit(args: argparse.Namespace) -> int:
    from rhailambda.client import Client

    env = Env(os.environ)
    if args.redis_url is not None:
        redis = RedisSettings(url=args.redis_url, setting="--redis-url")
    else:
        redis = RedisSettings.from_env(env)
    protocol = ProtocolSettings.from_env(env)
    script = args.script if args.script is not None else _read_script(args.file)
    key = None
    if args.key is not None:
        from rhailambda.signing import SigningKey

        key = SigningKey.read(Path(args.key))
        if args.caller not in (None, key.public_key):
            raise SettingError("--caller", f"the key signs as {key.public_key}, not {args.caller}")
    elif args.caller is None:
        raise SettingError("--caller", "give a caller id (or --key to sign as its public key)")
    with Client(redis.url, layout=protocol.layout, signing_key=key) as client:
        task_id = client.submit(
            script,
            worker_id=args.worker,
            context_id=args.context,
            caller_id=args.caller or "",
            task_id=args.task_id,
        )
        if not args.wait:
            print(task_id)
            return 0
        try:
            reply = client.wait(task_id, args.timeout)
        except ReplyTimeoutError as exc:
            print(f"rhailambda: {exc}", file=sys.stderr)
            return 3
    print(json.dumps(reply.raw, ensure_ascii=False))
    return 0 if reply.ok else 1


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``rhailambda submit: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rhailambda", description="Run Rhai scripts from Redis queues on serverless functions."
    )
    subparsers = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", required=True),
    )
    from rhailambda.keys_cli import configure as configure_keys
    from rhailambda.ops.cli import configure as configure_ops
    from rhailambda.shim.cli import configure as configure_shim

    configure_shim(subparsers)
    _add_submit(subparsers)
    configure_keys(subparsers)
    configure_ops(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
    except SettingError as exc:
        print(f"rhailambda: bad setting {_one_line(exc)}", file=sys.stderr)
        return 2
    except InvalidIdError as exc:
        print(f"rhailambda: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RhailambdaError as exc:
        print(f"rhailambda: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:  # an optional dependency: say which extra brings it
        extra = _EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"rhailambda: this command needs {exc.name}, which is not installed: "
              f"pip install 'rhailambda[{extra}]'", file=sys.stderr)  # fmt: skip
        return 1
    return code


#: optional dependencies, by the extra of pyproject.toml that installs them
_EXTRAS = {"rich": "cli", "boto3": "aws"}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
