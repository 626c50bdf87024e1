"""The one exception type the CLI turns into a clear message and exit code 2."""


class DistillError(Exception):
    """A user-facing error: bad input, a missing or corrupt file, no data source reachable.

    The message says what went wrong, names the file, and says what to do.
    """
