"""Model registry (SPEC 8): immutable published runs, a CAS-moved ``champion`` alias, verified
loading. ``file://`` and ``s3://`` backends with the same semantics."""

from atft_core.registry.errors import (
    AliasConflictError,
    AlreadyExistsError,
    BackendUnavailableError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    PreconditionError,
    PublishError,
    RegistryError,
    UnsafeBackendError,
)
from atft_core.registry.gc import GcReport, parse_duration
from atft_core.registry.records import MAX_ROLLBACK_DEPTH
from atft_core.registry.registry import (
    ANY,
    AliasRecord,
    LoadedRun,
    Manifest,
    PublishResult,
    Registry,
    RunFile,
    RunSummary,
    code_version,
    load_champion,
    load_run,
)
from atft_core.registry.selfcheck import BackendCheck
from atft_core.registry.store import FileStore, S3Store, open_store, resolve_s3_settings

__all__ = [
    "ANY", "AliasConflictError", "AliasRecord", "AlreadyExistsError", "BackendCheck",
    "BackendUnavailableError", "FileStore", "GcReport", "MAX_ROLLBACK_DEPTH",
    "UnsafeBackendError", "parse_duration",
    "IntegrityError", "InvalidNameError", "LoadedRun", "Manifest", "NotFoundError",
    "PreconditionError", "PublishError", "PublishResult", "Registry", "RegistryError", "RunFile",
    "RunSummary", "S3Store", "code_version", "load_champion", "load_run", "open_store",
    "resolve_s3_settings",
]
