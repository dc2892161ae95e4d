"""The two kinds of failure a user can meet, mapped to exit codes by the CLI.

ConfigError: the user asked for something invalid (bad params, bad flag, missing input) -> exit 2.
SaganError: the request was valid but the work failed (diverged training, corrupt data) -> exit 1.
Both carry a one-line, human message; anything else escaping is a bug and keeps its traceback.
"""


class SaganError(RuntimeError):
    """A runtime failure with a message meant for the user (exit code 1)."""

    exit_code = 1


class ConfigError(SaganError):
    """A usage or configuration mistake (exit code 2)."""

    exit_code = 2
