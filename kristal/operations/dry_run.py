"""What a dry run tells before anything switches: the plan as a diff against what is live, and
the pack's expectations run against the freshly staged index (the same checks the switch would
be held to, minus the live pointer), so a failing expectation is caught before any switch.
"""

from __future__ import annotations

from typing import Any

from kristal.context import Context
from kristal.errors import ChecksNotPassed
from kristal.operations.plan import ActivationPlan
from kristal.operations.runner import step
from kristal.operations.steps import pack_checks
from kristal.runtime.checks import CheckReport
from kristal.verify.verifier import VerifiedRelease


@step("dry-run-checks")
def staged_checks(ctx: Context, release: VerifiedRelease) -> list[CheckReport]:
    """Each pack's expectations against its staged index (a fresh process each, as live)."""
    return [pack_checks(ctx, p) for p in release.packs]


def refuse_failing(channel_id: str, release_id: int, reports: list[CheckReport]) -> None:
    """`ChecksNotPassed` (exit 1, nothing switched) naming each failing expectation."""
    failing = [o for r in reports for o in r.outcomes if not o.passed]
    if failing:
        raise ChecksNotPassed(
            f"dry run: release {release_id} would fail its checks in {channel_id} ("
            + "; ".join(f"{o.name}: expected {o.expected}, measured {o.measured}"
                        for o in failing) + "); nothing switched")


def _short(value: str | None) -> str:
    return "none" if value is None else (value[:19] + "…" if len(value) > 20 else value)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_short(str(x)) for x in value)
    return _short(None if value is None else str(value))


def diff_lines(plan: ActivationPlan) -> list[str]:
    """`field: live → target` for what would change, `field: value (same)` for what would not."""
    summary = plan.summary()
    live, target = summary["live"] or {}, summary["target"]
    lines = []
    for field in ("release_id", "generation", "exchange_id", "runtime_pack_ids",
                  "federation_id"):
        before, after = live.get(field), target.get(field)
        if not live:
            lines.append(f"{field}: {_show(after)} (nothing live yet)")
        elif before == after:
            lines.append(f"{field}: {_show(after)} (same)")
        else:
            lines.append(f"{field}: {_show(before)} → {_show(after)}")
    return lines


def check_lines(reports: list[CheckReport]) -> list[str]:
    return [f"{'✓' if o.passed else '✗'} {o.name}: expected {o.expected}, measured {o.measured}"
            for r in reports for o in r.outcomes]


def dry_run_result(plan: ActivationPlan, reports: list[CheckReport]) -> tuple[str, dict[str, Any]]:
    """The dry run's message (plan, diff, checks) and its checks for the JSON document;
    raises `ChecksNotPassed` (exit 1, nothing switched) when an expectation fails."""
    target = plan.release.entry.release_id
    live = plan.state.record
    head = (f"dry run: release {target} would replace release {live.active.release_id} "
            f"(sequence {live.sequence}) in {plan.channel_id}" if live is not None
            else f"dry run: release {target} would be the first live in {plan.channel_id}")
    body = [head, *(f"  {line}" for line in diff_lines(plan)),
            "  checks against the staged index:", *(f"    {line}" for line in check_lines(reports))]
    refuse_failing(plan.channel_id, target, reports)
    body.append("  nothing switched")
    checks = {"passed": True, "outcomes": [o.model_dump() for r in reports for o in r.outcomes]}
    return "\n".join(body), checks
