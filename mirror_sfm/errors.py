"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class MirrorError(Exception):
    """Bad input or a missing file the user can fix; the message names the file."""
