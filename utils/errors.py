"""The user-facing error types and how an exception becomes one line of a message."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user. Scripts print its message as one line and exit non-zero."""


class SettingError(UserError):
    """A bad value of one named setting. Library code names the setting (e.g. 'ipc'); a script that knows
    which command-line flag sets it re-raises the message with the flag's name."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}")
        self.setting, self.problem = setting, problem


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line for a user-facing message: `TypeName: message`, every run of whitespace
    (newlines included) collapsed to one space, cut to `limit` characters."""
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
