"""The one exception type the CLI turns into a clear message and exit code 2."""


class DistillError(Exception):
    """A user-facing error: bad input, a missing or corrupt file, no data source reachable.

    The message says what went wrong, names the file, and says what to do.
    """


class MissingDependency(DistillError, ImportError):
    """An optional dependency that is not installed: the message names the extra that brings it
    (an ImportError too, for code that catches those)."""


#: import name -> the name pip installs it by
_PIP_NAMES = {"sklearn": "scikit-learn"}


def require(module: str, extra: str, what: str):
    """``import module``, or a one-line :class:`MissingDependency`: ``"<what> needs <package>: pip
    install 'distill[<extra>]'"``. Only a missing ``module`` is turned into that message; any other
    import failure inside it propagates as it is."""
    import importlib

    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != top:
            raise
        raise MissingDependency(f"{what} needs {_PIP_NAMES.get(top, top)}: pip install 'distill[{extra}]'") from None
