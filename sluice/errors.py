"""One exception root for sluice.

Every error is a `SluiceError`, split by what the caller should do with it:

- `TransientError`: the same work may succeed later (a lease lost to a slow worker, a busy
  database, a throttled service). The worker leaves the message for the queue to deliver again.
- `TerminalError`: repeating the same work gives the same failure (a corrupt gzip, a missing
  object, a key that escapes its bucket, a bad flag). The worker sends the message to the DLQ at
  once; the CLI prints the message and exits non-zero.

Errors carry their context as attributes (`context`) and, where one exists, the next command an
operator should try (`hint`).
"""

from __future__ import annotations

from typing import Any


class SluiceError(Exception):
    """Root of every error sluice raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.context: dict[str, Any] = context

    @property
    def error_class(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error_class, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        out.update({k: v for k, v in self.context.items() if v is not None})
        return out


class TransientError(SluiceError):
    """Retry later: the same call may succeed."""


class TerminalError(SluiceError):
    """Do not retry: the same call fails the same way."""


# Terminal errors -------------------------------------------------------------------------


class ConfigError(TerminalError):
    """The environment, a flag or an argument is wrong."""


class InvalidKey(TerminalError):
    """An object key or bucket name is empty, malformed or would escape its bucket."""


class ObjectNotFound(TerminalError):
    """The object does not exist (attributes: bucket, key)."""


class CorruptObject(TerminalError):
    """The object's bytes cannot be decoded (corrupt or truncated gzip)."""


class InvalidMessage(TerminalError):
    """A queue message body is not a message sluice understands."""


class ReceiptHandleInvalid(TerminalError):
    """A receipt handle is unknown or was superseded by a later receive."""


class BatchTooLarge(TerminalError):
    """More entries in one batch call than the backend allows."""


class QueueNotFound(TerminalError):
    """The named queue does not exist."""


class ProtectedEnvironment(TerminalError):
    """Destructive work asked of a protected environment without `--yes` (attribute: plan)."""


# Transient errors ------------------------------------------------------------------------


class LeaseLost(TransientError):
    """The claim on a raw object expired and was taken by another worker."""


class BackendBusy(TransientError):
    """The backend is throttling or locked; retry with backoff."""


class QueryFailed(TerminalError):
    """The query engine rejected or failed a statement."""
