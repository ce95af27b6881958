"""Reading a script file for ``submit FILE`` and ``run FILE`` (``-``: standard input)."""

from __future__ import annotations

import sys
from pathlib import Path

from rhailambda.errors import SettingError

__all__ = ["read_script"]


def read_script(path: Path) -> str:
    """The UTF-8 text of ``path`` (``-`` reads stdin); a SettingError names what is wrong."""
    what = "stdin" if str(path) == "-" else f"script file {path}"
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingError(what, f"not UTF-8 text (byte {exc.start})") from None
    except IsADirectoryError:
        raise SettingError(what, "is a directory, not a script file") from None
    except OSError as exc:
        raise SettingError(what, exc.strerror or type(exc).__name__) from None
