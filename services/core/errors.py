"""Errors meant for the user: each message is one sentence naming the thing and the fix.

They live at the bottom of the import graph so the store, sweeps, scheduler and API can
raise them without depending on the CLI, which prints them without a traceback (exit 2).
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: printed as one sentence, exit code 2."""


class ConfigError(UserError):
    """A configuration value or combination that cannot be used."""


class NotFound(UserError, LookupError):
    """A sweep, job or other row asked for by id does not exist."""
