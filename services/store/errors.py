"""The store's user-facing errors: each message is one sentence naming the thing and the fix.

They derive from `services.core.errors.UserError` so every `llc` command (and the API)
reports them without a traceback, whichever layer hit them.
"""
from __future__ import annotations

from services.core.errors import NotFound as CoreNotFound
from services.core.errors import UserError


class StoreError(UserError):
    """Base of every error the store raises on purpose."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or refused the credentials."""


class SchemaOutOfDate(StoreError):
    """The database schema revision is not the one this code was written for."""


class JobStateError(StoreError):
    """A job transition that its current state (or owner) does not allow; nothing was written."""


class NotFound(StoreError, CoreNotFound):
    """A sweep, job or other row asked for by id does not exist."""
