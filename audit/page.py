"""The audit's outputs: a CSV of every finding and an HTML page with thumbnails, most suspicious first. Both
written atomically (or as a stream to a pipe: ``_util.files.atomic_write``); an existing file is replaced
only if it is an audit file. The CSV's text cells go through ``_util.csvcells.cell``: a photo or class
named ``=...`` is no formula in a spreadsheet."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from clothprobe._util.csvcells import cell
from clothprobe._util.files import atomic_write, read_head
from clothprobe.audit.findings import Finding

COLUMNS = ["kind", "suspicion", "split", "path", "label", "detail", "other_split", "other_path"]
MARK = "<!-- clothprobe audit -->"
THUMBNAIL_ROWS = 300  # rows of the page with thumbnails; the CSV holds every finding


def is_audit_csv(path: Path) -> bool:
    """Whether the regular file ``path`` begins with the audit CSV's header."""
    return read_head(path, 4096).decode("utf-8", "replace").splitlines()[:1] == [",".join(COLUMNS)]


def is_audit_html(path: Path) -> bool:
    """Whether the regular file ``path`` carries the audit page's mark near its start."""
    return MARK in read_head(path, 200).decode("utf-8", "replace")


def write_csv(findings: list[Finding], path: Path) -> None:
    with atomic_write(path, newline="", stream=True) as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for f in findings:
            writer.writerow([cell(f.kind), f"{f.suspicion:.4f}", *map(cell, (f.split, f.path, f.label, f.detail,
                                                                             f.other_split, f.other_path))])


def _thumb(root: Path | None, rel: str) -> str:
    """An <img> of the photo as an embedded JPEG, or a note saying why it is not shown."""
    from PIL import Image

    from clothprobe.report.plots import thumbnail

    if not rel:
        return ""
    try:
        if root is None:
            raise FileNotFoundError(rel)
        buf = io.BytesIO()
        Image.fromarray(thumbnail(root / rel)).save(buf, format="JPEG", quality=80)
    except (OSError, ValueError) as err:
        return "<i>image not found</i>" if isinstance(err, FileNotFoundError) else "<i>image not shown</i>"
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="{html.escape(rel)}">'


def _row(f: Finding, root: Path | None, thumbs: bool) -> str:
    e = html.escape
    cells = [e(f.kind), f"{f.suspicion:.3f}", e(f.split), (_thumb(root, f.path) if thumbs else "") + f"<br>{e(f.path)}",
             e(f.label), e(f.detail),
             (_thumb(root, f.other_path) if thumbs else "") + f"<br>{e(f.other_split)} {e(f.other_path)}"]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def write_html(findings: list[Finding], path: Path, *, title: str, notes: list[str], root: Path | None) -> None:
    """The page: a summary, then one row per finding (the first THUMBNAIL_ROWS with thumbnails)."""
    e = html.escape
    head = "".join(f"<th>{c}</th>" for c in ("kind", "suspicion", "split", "photo", "label", "why", "other photo"))
    rows = [_row(f, root, i < THUMBNAIL_ROWS) for i, f in enumerate(findings)]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px;vertical-align:top;font-size:13px}img{max-width:160px;max-height:160px}")
    text = (f"<!DOCTYPE html>\n{MARK}\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head><body><h1>{e(title)}</h1>"
            + "".join(f"<p>{e(n)}</p>" for n in notes)
            + f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>\n")
    with atomic_write(path, stream=True) as fh:
        fh.write(text)
