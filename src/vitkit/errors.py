"""The mark of an error vitkit raises on purpose: its message is written for people (what was wrong, with which file
or key, what to do), so the command line prints it as one line, `vitkit VERB: error: MESSAGE`, and no traceback.

Torch-free, so that anything may subclass it. Combine it with the built-in type that says what kind of failure it
is, so that `except RuntimeError` / `except ValueError` keep catching it:

    class Diverged(VitkitError, RuntimeError):
        \"\"\"The loss became NaN or infinite.\"\"\"
"""
from __future__ import annotations


class VitkitError(Exception):
    """An error with a one-line message for people (module docstring)."""
