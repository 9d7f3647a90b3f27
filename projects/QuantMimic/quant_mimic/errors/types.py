"""The errors a user's input causes: one small family of exception types that the entry points
(:mod:`quant_mimic.errors.handler`) print as one line, instead of a traceback.

A :class:`UserError` names the file (or the command-line option) at fault, what is wrong with it,
and how to fix it; its line is ``error: <file>: <what is wrong>; <how to fix it>``. Everything
else that escapes an entry point is a bug and keeps its traceback. The subclasses also derive from
the built-in type such an error had before (``ValueError`` for a bad value, ``FileNotFoundError``
for a missing file, ``RuntimeError`` for a file that cannot be used), so code that caught those
still catches them.
"""

__all__ = ["UserError", "ConfigError", "DataError", "DATA_FIX", "MissingFileError", "BadFileError"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class UserError(Exception):
    """
    A problem with what the user gave (a data file, a config, an option, a weights file, an input
    image), not with the program.

    Args:
        file (str): the file or option at fault, as the user wrote it (e.g. ``my_data.yaml``,
            ``--family``).
        what (str): what is wrong with it. ``UserError(message)`` alone: a whole message that
            names the file and the fix itself.
        fix (str): how to fix it ("" when the message says it already).
    """

    def __init__(self, file: str, what: str = "", fix: str = ""):
        if not what:  # one argument: the whole message
            file, what = "", file
        self.file, self.what, self.fix = str(file), str(what), str(fix)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """``<file>: <what is wrong>; <how to fix it>``."""
        text = f"{self.file}: {self.what}" if self.file else self.what
        return f"{text}; {self.fix}" if self.fix else text

    def line(self) -> str:
        """The line an entry point prints: ``error: <file>: <what>; <fix>``, no newline in it."""
        return "error: " + _one_line(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable although __init__ takes three arguments
        return (type(self), (self.file, self.what, self.fix))


class ConfigError(UserError, ValueError):
    """A value the user set that cannot be used: a config key, a preset, a command-line option, a
    class count that does not fit the data."""


class DataError(UserError, ValueError):
    """An annotation or image file of the user's data that cannot be read as it should."""


# The fix of most data errors.
DATA_FIX = "correct the file, or leave its image out of the set (docs/YOUR_DATA.md)"


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named that does not exist."""


class BadFileError(UserError, RuntimeError):
    """A file the user named that exists but cannot be used: not a checkpoint, weights of another
    model, an ONNX file without the contract, an image OpenCV cannot read."""
