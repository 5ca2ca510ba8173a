"""Partitions shared by the per-participant assets."""

import dagster as dg

# One partition per participant label (``sub-01`` ...); keys are added by
# ``kp_assets.sensors.new_participant_sensor`` as participant folders appear.
participants = dg.DynamicPartitionsDefinition(name="participants")
