"""``rhailambda keygen``: a new secp256k1 signing key in a file (0600); prints its public key.

The key file is one line, the 32-byte secret as 64 hex digits (PROTOCOL.md, "Signed
tasks"); ``rhailambda submit --key FILE`` and ``SigningKey.read(path)`` read it. The
public key printed is the caller id the key proves (and the id of the circle it owns).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["configure"]


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub = subparsers.add_parser(
        "keygen",
        help="write a new signing key file (0600) and print its public key",
        description="Generate a secp256k1 key for signed tasks; print its public key (callerId).",
    )
    sub.add_argument("--out", type=Path, required=True, help="the key file to write")
    sub.add_argument("--force", action="store_true", help="replace an existing file")
    sub.set_defaults(func=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    from rhailambda.signing import SigningKey

    key = SigningKey.generate()
    key.write(args.out, overwrite=args.force)
    print(key.public_key)
    return 0
