"""One exception type for every error a user can fix.

The CLI prints a CompassError as one line (no traceback) and exits 1, so the message must name the file,
line or key at fault and say what to do about it.
"""


class CompassError(Exception):
    """A user-fixable error; str(e) is the one line the CLI shows."""
