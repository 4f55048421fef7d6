"""The one exception hierarchy of kristal-activate.

Every failure the product can report is a `KristalError` subclass carrying its upstream-style
error code (DESIGN §9) and the CLI exit status it maps to. Nothing else is raised across modules.
"""

from __future__ import annotations

from typing import ClassVar

# Exit statuses of `kristalctl` (DESIGN §9).
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3
EXIT_INFRA = 4
EXIT_ROLLED_BACK = 5


class KristalError(Exception):
    """Base of every coded failure. `code` is the stable machine-readable name."""

    code: ClassVar[str] = "kristal_error"
    exit_status: ClassVar[int] = EXIT_REFUSED

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(f"{self.code}: {message}")

    def line(self) -> str:
        """The one stderr line the CLI prints for this failure."""
        return f"error: {self.code}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"error_code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


# --- documents and identity ------------------------------------------------------------------
class ManifestSchemaInvalid(KristalError):
    code = "manifest_schema_invalid"


class IdentityMismatch(KristalError):
    code = "identity_mismatch"


class PathInvalid(KristalError):
    code = "path_invalid"


class FileInventoryMissing(KristalError):
    code = "file_inventory_missing"


class FileHashMismatch(KristalError):
    code = "file_hash_mismatch"


class ProfileUnsupported(KristalError):
    code = "profile_unsupported"


# --- signatures and trust --------------------------------------------------------------------
class SignatureInvalid(KristalError):
    code = "signature_invalid"


class SignatureMissing(KristalError):
    code = "signature_missing"


class KeyUnknown(KristalError):
    code = "key_unknown"


class KeyExpired(KristalError):
    code = "key_expired"


class KeyRevoked(KristalError):
    code = "key_revoked"


class TrustRootMissing(KristalError):
    code = "trust_root_missing"


# --- validation reports ----------------------------------------------------------------------
class ValidationReportMissing(KristalError):
    code = "validation_report_missing"


class ValidationFailed(KristalError):
    code = "validation_failed"


# --- release policy --------------------------------------------------------------------------
class RuntimePackRevoked(KristalError):
    code = "runtime_pack_revoked"


class ReleaseRevoked(KristalError):
    code = "release_revoked"


class ReleaseQuarantined(KristalError):
    code = "release_quarantined"


class SourceExchangeMismatch(KristalError):
    code = "source_exchange_mismatch"


class GenerationMismatch(KristalError):
    code = "generation_mismatch"


class ReleaseIdDowngradeBlocked(KristalError):
    code = "release_id_downgrade_blocked"


class ReleaseIdSubstitutionBlocked(KristalError):
    code = "release_id_substitution_blocked"


class RollbackNotAuthorized(KristalError):
    code = "rollback_not_authorized"


class RollbackTargetMissing(KristalError):
    code = "rollback_target_missing"


class IndexReplayed(KristalError):
    code = "index_replayed"


class IndexExpired(KristalError):
    code = "index_expired"


# --- the pointer -----------------------------------------------------------------------------
class PointerInvalid(KristalError):
    code = "pointer_invalid"


class PointerConflict(KristalError):
    code = "pointer_conflict"
    exit_status = EXIT_CONFLICT


class CommitUnknown(KristalError):
    code = "commit_unknown"
    exit_status = EXIT_INFRA


class CheckFailed(KristalError):
    """Post-activation checks failed; the flow rolled back (exit 5)."""

    code = "check_failed"
    exit_status = EXIT_ROLLED_BACK


class EndpointUnsafe(KristalError):
    code = "endpoint_unsafe"
    exit_status = EXIT_INFRA


class ActivationAborted(KristalError):
    code = "activation_aborted"


# --- our own codes (no upstream name) --------------------------------------------------------
class StorageUnavailable(KristalError):
    """The object store could not be reached or kept failing (timeouts, 5xx, resets)."""

    code = "storage_unavailable"
    exit_status = EXIT_INFRA


class UsageInvalid(KristalError):
    """Bad command-line input or configuration."""

    code = "usage_invalid"
    exit_status = EXIT_USAGE


ALL_ERRORS: tuple[type[KristalError], ...] = tuple(
    cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, KristalError) and cls is not KristalError
)
