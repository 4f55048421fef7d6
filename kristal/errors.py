"""The one exception hierarchy of kristal-activate, in families (after python-tuf and Iceberg).

Every failure the product reports is a `KristalError` carrying its upstream-style error code
(DESIGN §9). Its family says what happened to the channel and what a caller may do next, and
gives the CLI exit status; nothing else is raised across modules.

  Refused (1)         nothing live changed; fix the input or the policy, then ask again
  UsageError (2)      the request itself is malformed; nothing was read or written
  Conflict (3)        another writer won a race; nothing of ours was written: re-read, retry
  Infrastructure (4)  the store or orchestrator failed, or a write's outcome is unknown
  RolledBack (5)      a release went live, failed its checks and was rolled back
"""

from __future__ import annotations

from typing import Any, ClassVar

# Exit statuses of `kristalctl` (DESIGN §9).
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3
EXIT_INFRA = 4
EXIT_ROLLED_BACK = 5


class KristalError(Exception):
    """Base of every coded failure. `code` is the stable machine-readable name; the family
    (the direct subclass of this one) fixes `exit_status`."""

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
        out: dict[str, object] = {"error_code": self.code, "message": self.message,
                                  "exit_status": self.exit_status}
        if self.field:
            out["field"] = self.field
        return out


# --- the families ----------------------------------------------------------------------------
class Refused(KristalError):
    """Verification or policy said no, before anything live changed.

    The channel is exactly as it was. Retrying the same request gives the same answer; change
    the input (a good artifact, an authorization, `--force --reason`) or the policy first."""

    exit_status = EXIT_REFUSED


class UsageError(KristalError):
    """The request is malformed (a flag, a channel id, the configuration). Nothing was read or
    written; correct the request."""

    exit_status = EXIT_USAGE


class Conflict(KristalError):
    """Another writer changed the channel first; none of our writes landed.

    Safe to retry: re-read the pointer (or index) and decide again on what is there now."""

    exit_status = EXIT_CONFLICT


class Infrastructure(KristalError):
    """The object store or the orchestrator failed, or kept failing through the retries.

    Nothing was decided on the failure: retrying the whole operation later is safe, since every
    write is conditional or write-once."""

    exit_status = EXIT_INFRA


class UnknownOutcome(Infrastructure):
    """A write was sent but whether it landed could not be learned (Iceberg's
    `CommitStateUnknownException`).

    Never clean up after it (nothing staged may be deleted). Re-read the pointer: if it holds
    our activation the write succeeded; re-running the same activation with `--force` resumes
    at the checks."""


class LiveUnchecked(UnknownOutcome):
    """The switch landed, so the release is live, but its post-activation checks could not
    be run or recorded (the cause's code is kept; the exit status says the channel changed).

    Re-run the same activation with `--force` to resume at the checks, or roll back; a
    nightly reverify fails checks that never arrive (DESIGN §6 invariant 5)."""

    def __init__(self, message: str, *, cause: KristalError | None = None) -> None:
        cause = cause or Refused(message)
        super().__init__(message, field=cause.field)
        # The instance keeps the cause's code: scripts still see what went wrong.
        self.__dict__["code"] = cause.code
        self.args = (f"{cause.code}: {message}",)

    def __reduce__(self) -> tuple[object, ...]:
        cause = (error_class(self.code) or Refused)(self.message, field=self.field)
        return (type(self), (self.message,), {"cause": cause})

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        cause: KristalError = (state or {}).get("cause") or Refused(self.message)
        self.field = cause.field
        self.__dict__["code"] = cause.code
        self.args = (f"{cause.code}: {self.message}",)


class RolledBack(KristalError):
    """The release went live, failed its post-activation checks, was quarantined and the
    channel was rolled back to the release that was live before it (which is live now).

    Do not retry the same release: publish a fixed one, or `--force` it deliberately."""

    exit_status = EXIT_ROLLED_BACK


# --- documents and identity (refused) --------------------------------------------------------
class ManifestSchemaInvalid(Refused):
    code = "manifest_schema_invalid"


class IdentityMismatch(Refused):
    code = "identity_mismatch"


class PathInvalid(Refused):
    code = "path_invalid"


class FileInventoryMissing(Refused):
    code = "file_inventory_missing"


class ObjectNotFound(FileInventoryMissing):
    """The key does not exist in the bucket."""


class FileHashMismatch(Refused):
    code = "file_hash_mismatch"


class ProfileUnsupported(Refused):
    code = "profile_unsupported"


# --- signatures and trust (refused) ----------------------------------------------------------
class SignatureInvalid(Refused):
    code = "signature_invalid"


class SignatureMissing(Refused):
    code = "signature_missing"


class KeyUnknown(Refused):
    code = "key_unknown"


class KeyExpired(Refused):
    code = "key_expired"


class KeyRevoked(Refused):
    code = "key_revoked"


class TrustRootMissing(Refused):
    code = "trust_root_missing"


# --- validation reports (refused) ------------------------------------------------------------
class ValidationReportMissing(Refused):
    code = "validation_report_missing"


class ValidationFailed(Refused):
    code = "validation_failed"


# --- release policy (refused) ----------------------------------------------------------------
class RuntimePackRevoked(Refused):
    code = "runtime_pack_revoked"


class ReleaseRevoked(Refused):
    code = "release_revoked"


class ReleaseQuarantined(Refused):
    code = "release_quarantined"


class SourceExchangeMismatch(Refused):
    code = "source_exchange_mismatch"


class GenerationMismatch(Refused):
    code = "generation_mismatch"


class ReleaseIdDowngradeBlocked(Refused):
    code = "release_id_downgrade_blocked"


class ReleaseIdSubstitutionBlocked(Refused):
    code = "release_id_substitution_blocked"


class RollbackNotAuthorized(Refused):
    code = "rollback_not_authorized"


class RollbackTargetMissing(Refused):
    code = "rollback_target_missing"


class IndexReplayed(Refused):
    code = "index_replayed"


class IndexExpired(Refused):
    code = "index_expired"


class ChannelUnknown(Refused):
    """No index, or no record, for that channel: nothing is published or nothing was live."""

    code = "channel_unknown"


class ReleaseUnknown(Refused):
    """The release is not in the channel's signed index."""

    code = "release_unknown"


class RollbackFailed(Refused):
    """An automatic rollback found no safe target (DESIGN §5): nothing was changed by it."""

    code = "rollback_failed"


class ActivationAborted(Refused):
    code = "activation_aborted"


# --- the pointer -----------------------------------------------------------------------------
class PointerInvalid(Refused):
    """A channel record does not verify (signature, chain link, binding): nothing is written on
    top of it until an operator looks."""

    code = "pointer_invalid"


class PointerConflict(Conflict):
    code = "pointer_conflict"


class ChannelLocked(Conflict):
    """A live run holds the channel's lock (it renewed its lease recently): wait for it, or
    stop that run first."""

    code = "channel_locked"


class CommitUnknown(UnknownOutcome):
    code = "commit_unknown"


class CheckFailed(RolledBack):
    """Post-activation checks failed; the operation rolled back (exit 5)."""

    code = "check_failed"


class ChecksNotPassed(Refused):
    """The live record's post-activation checks failed or stayed missing past their timeout,
    and nothing was rolled back (a re-verification's finding: exit 1, code `check_failed`)."""

    code = "check_failed"


# --- infrastructure --------------------------------------------------------------------------
class EndpointUnsafe(Infrastructure):
    """The S3 endpoint ignores conditional writes (DESIGN §6 invariant 6): never write to it."""

    code = "endpoint_unsafe"


class StorageUnavailable(Infrastructure):
    """The object store could not be reached or kept failing (timeouts, 5xx, resets)."""

    code = "storage_unavailable"


class WorkerUnavailable(Infrastructure):
    """No worker started a run submitted to a work queue in time (none polls that queue, or
    none is free): the run was cancelled before it began, so it changed nothing."""

    code = "worker_unavailable"


class InternalError(Infrastructure):
    """A failure with no code of its own (a bug): the last resort, never a traceback."""

    code = "internal_error"


# --- usage -----------------------------------------------------------------------------------
class UsageInvalid(UsageError):
    """Bad command-line input or configuration."""

    code = "usage_invalid"


FAMILIES: tuple[type[KristalError], ...] = (
    Refused, UsageError, Conflict, Infrastructure, UnknownOutcome, RolledBack,
)
ALL_ERRORS: tuple[type[KristalError], ...] = tuple(
    cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, KristalError)
    and cls is not KristalError and cls not in FAMILIES
)


def error_class(code: str | None) -> type[KristalError] | None:
    """The error class with this code, or None. `check_failed` names two: the checks failed
    and were rolled back (`CheckFailed`, exit 5), or not (`ChecksNotPassed`, exit 1); this
    answers the one where nothing was rolled back."""
    if code == ChecksNotPassed.code:
        return ChecksNotPassed
    return next((cls for cls in ALL_ERRORS if cls.code == code), None)
