"""Registry errors: every failure names the key / run / file it concerns."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """Base class of every registry failure."""


class InvalidNameError(RegistryError, ValueError):
    """A run id, alias name or file name is unsafe (refused before any write)."""


class NotFoundError(RegistryError, KeyError):
    """The object, run or alias does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "not found"


class AlreadyExistsError(RegistryError):
    """A create-only write found the object already there (If-None-Match: * / O_EXCL)."""


class PreconditionError(RegistryError):
    """A compare-and-swap lost: the object changed since it was read (If-Match)."""


class AliasConflictError(PreconditionError):
    """The alias does not point where the caller expected (someone else promoted first)."""


class IntegrityError(RegistryError):
    """A stored object does not match its manifest (sha256 / size), or a manifest is malformed."""


class PublishError(RegistryError):
    """A run directory cannot be published (missing files, bad config, conflicting content)."""


class BackendUnavailableError(RegistryError):
    """The storage backend cannot be used: unreachable, no answer within the deadline, missing
    bucket or credentials. The message names the endpoint."""


class UnsafeBackendError(RegistryError):
    """The backend does not enforce create-only writes or compare-and-swap (self-check failed)."""

