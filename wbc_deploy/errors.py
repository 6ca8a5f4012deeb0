"""The one exception type that reaches users as a single clear line."""
from __future__ import annotations


class WbcError(Exception):
    """A user-facing error: bad input, missing file, unavailable backend.

    The CLI prints ``str(error)`` as one line and exits non-zero; no traceback is shown.
    Library code raises it for anything the user can fix, with the fix in the message.
    """

    exit_code: int = 2
