"""The base class of every error that is the user's to fix, not a bug: torch-free, imported everywhere.

A missing file, malformed data, incompatible artifacts, a refused parity gate, a server that cannot start:
the CLI prints one ``genrec: error: <message>`` line and exits with :data:`EXIT_USER_ERROR` (the parity gate
with its own code, 3). Anything else is a bug and keeps its traceback; ``genrec --debug`` shows the
traceback of user errors too.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user gave genrec is missing or wrong; the message says what and where."""
