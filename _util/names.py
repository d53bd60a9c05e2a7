"""File names as the OS gives them, which need not be valid UTF-8 (undecodable bytes come as lone surrogates):
what a cache, a score file or a terminal can take."""

from __future__ import annotations

import os


def utf8(text: str) -> bool:
    """Whether ``text`` (a name or path from the OS) is valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` as valid UTF-8: undecodable bytes escaped as ``\\xff`` (the same bytes give the same text)."""
    return text if utf8(text) else os.fsencode(text).decode("utf-8", "backslashreplace")
