"""Errors a user can fix; everything else is a bug and keeps its traceback."""


class InvalidInput(ValueError):
    """Bad input from a person or a client: shown as is, exit status 2 or a 4xx, nothing written."""


class NotFound(LookupError):
    """A named thing (subscriber, post, tag) does not exist."""
