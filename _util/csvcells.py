"""The one place text becomes a CSV cell: every CSV clothprobe writes (predict's score files, ``audit.csv``,
a run's ``predictions.csv``) passes each text value through ``cell``, and every CSV it reads back through
``text_of``.

A spreadsheet (Excel, LibreOffice Calc, Google Sheets) runs a cell that begins with ``=``, ``+``, ``-`` or
``@`` as a formula, and some also one that begins with a tab, a carriage return, a line feed or a NUL, or
with the full-width ``＝ ＋ － ＠``: a photo named ``=HYPERLINK(...).jpg`` would be live code in whoever opens
the file. As OWASP advises, such a value is written with a leading ``'``, which spreadsheets read as "this
is text". A value that itself begins with ``'`` gets one more, so that ``text_of`` (strip one leading
``'``) gives every value back exactly: ``text_of(cell(s)) == s`` for any text. Numbers are written as
numbers, never through here.
"""

from __future__ import annotations

QUOTE = "'"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\0", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def cell(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs as a formula (reversed by ``text_of``)."""
    return QUOTE + text if text.startswith((*FORMULA_STARTS, QUOTE)) else text


def text_of(value: str) -> str:
    """The text a cell written by ``cell`` holds."""
    return value[1:] if value.startswith(QUOTE) else value
