"""What every benchmark does last: print its result and keep it, headed by the command that made it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def write_report(path: Path, text: str) -> None:
    """Print ``text`` and write it to ``path`` under the exact command line (``bench/<script>.py ARGS``)."""
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    path.write_text(f"`{command}`\n\n{text}")
    print(f"written to {path}")
