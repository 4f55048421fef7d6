"""The seam between the operations and whatever runs them (DESIGN §8).

Every operation of `kristal.operations` is written once, as calls of named `Step`s on a `Runner`
that the caller passes in. The flows pass Prefect's (`tasks.runner.PrefectRunner`): each step
is a task (its name shown in the UI, `NO_CACHE`, retries on storage hiccups where the step
says it is safe), locks are Prefect concurrency leases, artifacts and events go to the API.
`PlainRunner` calls the steps directly: tests, benchmarks, the fleet's threads, and the CLI's
break-glass path when no orchestrator is reachable. Nothing an operation decides depends on
which runner it got. A fleet fanned out hands each channel's whole activation to the runner
(`activate_elsewhere`: Prefect's runs it on a worker of the channel's region); only the
orchestrator can do that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

from kristal.errors import StorageUnavailable, UsageInvalid

if TYPE_CHECKING:
    from kristal.operations.outcome import Outcome

P = ParamSpec("P")
R = TypeVar("R")
log = logging.getLogger("kristal")


@dataclass(frozen=True)
class Step(Generic[P, R]):
    """A named domain step. `retries`: a storage hiccup may be retried because the step is
    idempotent (reads, write-once records); a step that moves the pointer never is, since a
    retry after a write that landed would move it again. `switches`: the step moves the
    pointer forward; a runner holding the channel's lock does not start it once that lock is
    lost (the conditional write stays the only lock correctness needs)."""

    name: str
    fn: Callable[P, R]
    retries: bool = True
    run_name: str | None = None  # a template over the step's parameters: "activate-wave-{wave}"
    switches: bool = False

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)


def step(name: str, *, retries: bool = True, run_name: str | None = None,
         switches: bool = False) -> Callable[[Callable[P, R]], Step[P, R]]:
    """Declare a function as a named step (see `Step`)."""

    def wrap(fn: Callable[P, R]) -> Step[P, R]:
        return Step(name, fn, retries, run_name, switches)

    return wrap


@dataclass(frozen=True)
class Artifact:
    """A report an operation leaves (a markdown page or a table), keyed by what it is about:
    `kind` (verification, changes, followup, reverify, ...) and `scope` (a channel id, or a
    fleet's key). The runner decides where it goes (Prefect artifacts, or kept in memory).
    A view that costs reads to build (a channel's history) is `render`ed only by a runner
    that shows it."""

    kind: str
    scope: str
    description: str
    markdown: str | None = None
    table: list[dict[str, Any]] | None = None
    render: Callable[[], str] | None = None

    def text(self) -> str | None:
        return self.render() if self.render is not None else self.markdown


class Progress(Protocol):
    def update(self, fraction: float, description: str) -> None: ...

    def close(self) -> None: ...


class HeldLock(Protocol):
    """Locks taken ahead of their use (a fleet's next wave): `wait()` until held, `held`
    while the lease is alive, `release()` when done, `join()` to finish letting go."""

    def wait(self) -> None: ...

    @property
    def held(self) -> bool: ...

    def release(self) -> None: ...

    def join(self) -> None: ...


@dataclass(frozen=True)
class RemoteActivation:
    """One channel's `activate`, to run elsewhere (a fleet fanned out to a work pool): the run
    takes the channel's lock and verifies, stages, switches and checks there."""

    channel_id: str
    release_id: int
    force: bool  # the release is live with its checks pending: resume them
    operator: str
    reason: str
    correlation_id: str
    fleet: str  # the fleet's key (`fleet_key`): the run is tagged with it
    wave: int


@dataclass(frozen=True)
class RanElsewhere:
    """What a `RemoteActivation` did, and where it ran (the run's name, id and queue)."""

    outcome: Outcome
    where: str


@dataclass(frozen=True)
class Approval:
    """A human's answer to a paused operation (the downgrade's approval form)."""

    approver: str
    approve: bool
    comment: str = ""


class Runner(Protocol):
    """What an operation needs from its orchestrator."""

    @property
    def run_id(self) -> str | None:
        """The run these steps belong to (recorded as `flow_run_id`), None without one."""

    @property
    def orchestrator(self) -> str:
        """`prefect` or `none`: recorded, so a break-glass run says so."""

    def __call__(self, step: Step[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def inline(self) -> Runner:
        """A runner for work inside one step: steps as plain calls, no retries of their own
        (the enclosing step's retries cover them), the same artifacts, events and log."""

    def lock(self, channel_ids: Sequence[str], *, wait_s: float,
             proceed_without: bool = False) -> AbstractContextManager[bool]:
        """Hold the channels' locks (yields True), or with `proceed_without`, go on without
        them after `wait_s` (yields False): only for operations whose conditional write is
        safe alone (DESIGN §6: the conditional write is the only lock correctness needs)."""

    def lock_ahead(self, channel_ids: Sequence[str]) -> HeldLock: ...

    def prepare_locks(self, channel_ids: Sequence[str]) -> None:
        """Create the channels' locks where missing (before they are needed)."""

    def check_fan_out(self, channel_ids: Sequence[str]) -> str:
        """Before anything is switched: every channel can be activated elsewhere (raises
        `UsageInvalid` if one cannot); returns where they will run."""

    def activate_elsewhere(self, job: RemoteActivation) -> RanElsewhere:
        """Run one channel's activation elsewhere and wait for its end: what it did, or the
        coded error it failed with (raised as the `activate` operation raises it)."""

    def publish(self, artifact: Artifact) -> None: ...

    def progress(self, kind: str, scope: str, description: str) -> Progress: ...

    def emit(self, event: str, *, channel_id: str | None = None, fleet: str | None = None,
             payload: dict[str, Any]) -> bool:
        """Send an event about a channel or a fleet; False when it was not delivered."""

    def log(self, message: str, *, warning: bool = False) -> None: ...

    def ask_approval(self, description: str, timeout_s: float) -> Approval | None:
        """Pause for a human; None when the timeout passed without an answer."""


# --- without an orchestrator -----------------------------------------------------------------
NO_FAN_OUT = ("a fleet fans out to the workers of a work pool: that needs the orchestrator "
              "(PREFECT_API_URL)")


class Unlocked:
    """A `HeldLock` nobody needs: always held, nothing to release."""

    held = True

    def wait(self) -> None:
        return None

    def release(self) -> None:
        return None

    def join(self) -> None:
        return None


class _KeptProgress:
    def __init__(self, runner: PlainRunner, kind: str, scope: str) -> None:
        self._runner, self._kind, self._scope = runner, kind, scope
        self.fraction = 0.0

    def update(self, fraction: float, description: str) -> None:
        self.fraction = fraction
        self._runner.log(f"{self._kind} {self._scope}: {fraction:.0%} {description}")

    def close(self) -> None:
        return None


@dataclass
class PlainRunner:
    """Steps as direct calls. No locks (the conditional write is the only one correctness
    relies on); artifacts and events are kept in `artifacts` and `events` for the caller.
    A step that allows retries is retried on `StorageUnavailable` after each of
    `retry_delays_s`, as the Prefect task of the same step would be."""

    retry_delays_s: Sequence[float] = ()
    artifacts: list[Artifact] = field(default_factory=list)
    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    echo: Callable[[str], None] | None = None

    @property
    def run_id(self) -> str | None:
        return None

    @property
    def orchestrator(self) -> str:
        return "none"

    def __call__(self, step: Step[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        delays = list(self.retry_delays_s) if step.retries else []
        while True:
            try:
                return step.fn(*args, **kwargs)
            except StorageUnavailable:
                if not delays:
                    raise
                time.sleep(delays.pop(0))

    def inline(self) -> PlainRunner:
        return PlainRunner((), self.artifacts, self.events, self.messages, self.echo)

    @contextmanager
    def lock(self, channel_ids: Sequence[str], *, wait_s: float,
             proceed_without: bool = False) -> Iterator[bool]:
        yield False

    def lock_ahead(self, channel_ids: Sequence[str]) -> HeldLock:
        return Unlocked()

    def prepare_locks(self, channel_ids: Sequence[str]) -> None:
        return None

    def check_fan_out(self, channel_ids: Sequence[str]) -> str:
        raise UsageInvalid(NO_FAN_OUT)

    def activate_elsewhere(self, job: RemoteActivation) -> RanElsewhere:
        raise UsageInvalid(NO_FAN_OUT)

    def publish(self, artifact: Artifact) -> None:
        self.artifacts.append(artifact)

    def progress(self, kind: str, scope: str, description: str) -> Progress:
        return _KeptProgress(self, kind, scope)

    def emit(self, event: str, *, channel_id: str | None = None, fleet: str | None = None,
             payload: dict[str, Any]) -> bool:
        self.events.append((event, channel_id or fleet, payload))
        return False  # kept here: no orchestrator delivered it

    def log(self, message: str, *, warning: bool = False) -> None:
        self.messages.append(message)
        log.log(logging.WARNING if warning else logging.INFO, message)
        if self.echo is not None:
            self.echo(message)

    def ask_approval(self, description: str, timeout_s: float) -> Approval | None:
        raise UsageInvalid("an approval needs the orchestrator (a paused Prefect run); "
                           "run without --require-approval, or with PREFECT_API_URL set")
