"""The names of the events operations emit (DESIGN §8); automations and monitors match on them.
Each is about one channel (resource `kristal.channel.<tenant>.<env>.<region>`) unless said.
"""

CHECK_FAILED = "kristal.check.failed"  # a monitor's report: payload activation_id, reason
ROLLBACK_RECORDED = "kristal.rollback.recorded"  # every rollback's follow-up
ROLLBACK_FAILED = "kristal.rollback.failed"  # an automatic rollback found no safe target
REVERIFY_FAILED = "kristal.reverify.failed"  # an alert, not a rollback trigger
FLEET_HALTED = "kristal.fleet.halted"  # about a fleet (resource `kristal.fleet.<key>`)
DOWNGRADE_NOT_APPROVED = "kristal.downgrade.not-approved"  # rejected, timed out, or four-eyes
BAKE_FAILED = "kristal.bake.failed"  # a bake failed: payload activation_id, reason, rollback
