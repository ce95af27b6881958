"""Signed tasks: ``CALLER_ID`` proven by a secp256k1 signature, not merely asserted.

The rule (PROTOCOL.md, "Signed tasks", with a test vector): a task may carry a
field ``signature``, the hex of the 64-byte compact ECDSA signature ``r || s``
(low s) over the SHA-256 digest of the canonical message::

    json.dumps(["rhailib-task-v1", taskId, contextId, callerId, script, createdAt],
               separators=(",", ":"), ensure_ascii=False).encode("utf-8")

made with the secret key whose compressed public key (33 bytes, as hex) is the
task's ``callerId``. The function decides per task with :func:`check_task`, a pure
function of the settings, the queue, the task's fields and the time; whether a
signed task id was already finished (a replay) is the caller's one look-up.

The curve work is libsecp256k1 through ``coincurve``, imported on first use only:
an unsigned task never pays for it (the function's cold start).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Final

from rhailambda.errors import RhailambdaError
from rhailambda.protocol import SIGNATURE, TaskFields
from rhailambda.settings import SignatureSettings

if TYPE_CHECKING:
    import coincurve

__all__ = [
    "DOMAIN",
    "INVALID_SIGNATURE",
    "SIGNATURE_REQUIRED",
    "KeyFileError",
    "SigningKey",
    "Verdict",
    "canonical_message",
    "check_task",
    "public_key_from_hex",
    "replay_error",
    "task_digest",
    "verify_digest",
]

#: the first element of the signed array: a version, and no other message can collide
DOMAIN: Final = "rhailib-task-v1"
SIGNATURE_REQUIRED: Final = "signature required"
INVALID_SIGNATURE: Final = "invalid signature"

_SECRET_BYTES = 32
_PUBLIC_KEY_BYTES = 33
_SIGNATURE_BYTES = 64
# the order of secp256k1's group
_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class KeyFileError(RhailambdaError):
    """A key file is missing, unreadable or not one line of 64 hex digits (``path``)."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@cache
def _curve() -> type[coincurve.PrivateKey]:
    """coincurve, imported the first time a key or a signature is handled."""
    import coincurve

    return coincurve.PrivateKey


def canonical_message(
    task_id: str, context_id: str, caller_id: str, script: str, created_at: str
) -> bytes:
    """The bytes a task's signature covers (raises UnicodeEncodeError on lone surrogates)."""
    array = [DOMAIN, task_id, context_id, caller_id, script, created_at]
    return json.dumps(array, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def task_digest(
    task_id: str, context_id: str, caller_id: str, script: str, created_at: str
) -> bytes:
    """SHA-256 of :func:`canonical_message`: the 32 bytes that are signed."""
    import hashlib  # OpenSSL: 6-8 ms of a cold start, paid by the first signed task only

    message = canonical_message(task_id, context_id, caller_id, script, created_at)
    return hashlib.sha256(message).digest()


class SigningKey:
    """A secp256k1 secret key that signs tasks; ``public_key`` is the caller id it proves."""

    __slots__ = ("_key", "public_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != _SECRET_BYTES or not 0 < int.from_bytes(secret, "big") < _N:
            raise ValueError("a secret key is 32 bytes, a number in [1, n-1]")
        self._key = _curve()(secret)
        #: the compressed public key as 66 lower-case hex digits (the ``callerId``)
        self.public_key: str = self._key.public_key.format(compressed=True).hex()

    def __repr__(self) -> str:  # never the secret
        return f"SigningKey(public_key={self.public_key!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        import secrets  # loads OpenSSL (hmac): only keygen needs it

        while True:
            secret = secrets.token_bytes(_SECRET_BYTES)
            if 0 < int.from_bytes(secret, "big") < _N:
                return cls(secret)

    @classmethod
    def from_hex(cls, text: str) -> SigningKey:
        try:
            return cls(bytes.fromhex(text.strip()))
        except ValueError:
            raise ValueError("expected 64 hex digits of a secp256k1 secret key") from None

    def secret_hex(self) -> str:
        return self._key.secret.hex()

    def sign_digest(self, digest: bytes) -> bytes:
        """The 64-byte compact signature ``r || s`` of a 32-byte digest (RFC 6979, low s)."""
        from coincurve.ecdsa import der_to_cdata, serialize_compact

        return bytes(serialize_compact(der_to_cdata(self._key.sign(digest, hasher=None))))

    def sign_task(
        self, task_id: str, context_id: str, caller_id: str, script: str, created_at: str
    ) -> str:
        """The ``signature`` field for a task with these fields (hex)."""
        digest = task_digest(task_id, context_id, caller_id, script, created_at)
        return self.sign_digest(digest).hex()

    # --- key files: one line, the 32-byte secret as 64 hex digits, mode 0600 -------------
    def write(self, path: Path, *, overwrite: bool = False) -> None:
        """Write the key file (mode 0600 from the start; never over a file unless asked)."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise KeyFileError(path, "exists already (give --force to replace it)") from None
        except OSError as exc:
            raise KeyFileError(path, exc.strerror or str(exc)) from None
        with os.fdopen(fd, "w") as f:
            os.fchmod(fd, 0o600)  # an existing file overwritten keeps its old mode otherwise
            f.write(self.secret_hex() + "\n")

    @classmethod
    def read(cls, path: Path) -> SigningKey:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(path, getattr(exc, "strerror", None) or str(exc)) from None
        try:
            return cls.from_hex(text)
        except ValueError as exc:
            raise KeyFileError(path, str(exc)) from None


@lru_cache(maxsize=1024)
def public_key_from_hex(text: str) -> coincurve.PublicKey | None:
    """The public key a ``callerId`` names, or None when it is not 66 hex digits of one."""
    if len(text) != 2 * _PUBLIC_KEY_BYTES or text[:2] not in ("02", "03"):
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    from coincurve import PublicKey

    try:
        return PublicKey(raw)
    except ValueError:  # not a point on the curve
        return None


def verify_digest(public_key: coincurve.PublicKey, digest: bytes, signature: bytes) -> str | None:
    """Why ``signature`` is not ``public_key``'s over ``digest`` (None: it is)."""
    if len(signature) != _SIGNATURE_BYTES:
        return "not 128 hex digits (the 64 bytes r || s)"
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < _N and 0 < s < _N):
        return "r or s out of range"
    if s > _N // 2:
        return "s is high (a signature must use the low s: n - s)"
    from coincurve.ecdsa import cdata_to_der, deserialize_compact

    der = cdata_to_der(deserialize_compact(signature))
    if not public_key.verify(der, digest, hasher=None):
        return "it does not match the task's fields and callerId"
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy says of one task: run it (``error`` None) and whether the caller is proven.

    A ``verified`` task must still not be a finished task id coming back (a replay):
    the function checks its done marker before running it.
    """

    verified: bool
    error: str | None = None


_UNSIGNED: Final = Verdict(verified=False)
_VERIFIED: Final = Verdict(verified=True)


def _invalid(reason: str) -> Verdict:
    return Verdict(verified=False, error=f"{INVALID_SIGNATURE}: {reason}")


def _age_error(created_at: str, now_s: float, settings: SignatureSettings) -> str | None:
    try:
        created = datetime.fromisoformat(created_at)
    except ValueError:
        created = None
    if created is None or created.tzinfo is None:
        return f"createdAt {created_at!r} is not an RFC 3339 timestamp with an offset"
    age_s = now_s - created.timestamp()
    if age_s > settings.max_age_s + settings.clock_skew_s:
        return (
            f"expired: createdAt {created_at} is {age_s:.0f} s old, a signed task is valid "
            f"for {settings.max_age_s} s"
        )
    if age_s < -settings.clock_skew_s:
        return f"createdAt {created_at} is {-age_s:.0f} s in the future"
    return None


def check_task(
    settings: SignatureSettings, worker_id: str, task_id: str, fields: TaskFields, now_s: float
) -> Verdict:
    """The policy's decision for one claimed task queued as ``task_id`` on ``worker_id``.

    ``now_s`` is the time (Unix seconds). ``off``: signatures are ignored, nobody is
    verified. ``verify``: an unsigned task runs unverified, a signed one runs only if
    its signature holds. ``require`` (the policy, or ``worker_id`` listed in
    ``require_workers``): an unsigned task is refused too.
    """
    policy = settings.policy_for(worker_id)
    if policy == "off":
        return _UNSIGNED
    signature_hex = fields.raw.get(SIGNATURE, "")
    if not signature_hex:
        if policy == "require":
            return Verdict(
                verified=False,
                error=f"{SIGNATURE_REQUIRED}: worker {worker_id!r} runs signed tasks only",
            )
        return _UNSIGNED
    if fields.task_id != task_id:  # a hash copied under another id, its taskId left as was
        return _invalid(f"the hash's taskId {fields.task_id!r} is not the queued id {task_id!r}")
    public_key = public_key_from_hex(fields.caller_id)
    if public_key is None:
        return _invalid("callerId is not a public key (66 hex digits, compressed secp256k1)")
    try:
        signature = bytes.fromhex(signature_hex)
        digest = task_digest(
            task_id, fields.context_id, fields.caller_id, fields.script or "", fields.created_at
        )
    except ValueError:  # bad hex, or text no UTF-8 can carry (UnicodeEncodeError)
        return _invalid("not 128 hex digits (the 64 bytes r || s)")
    reason = verify_digest(public_key, digest, signature) or _age_error(
        fields.created_at, now_s, settings
    )
    return _VERIFIED if reason is None else _invalid(reason)


def replay_error(task_id: str) -> str:
    """The error reply of a signed task whose id was finished before."""
    return f"{INVALID_SIGNATURE}: task {task_id} was finished already (a replay)"
