"""One exception for bad input: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
