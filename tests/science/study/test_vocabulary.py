"""The shared vocabulary (kp_science.study.vocabulary) is the one every layer uses."""

from __future__ import annotations

from kp_science.study import vocabulary

# --- the study's vocabulary has one home ------------------------------------------------------


def test_vocabulary_is_shared():
    from kp_assets import sensors, task_runs
    from kp_science.dcm import group
    from kp_science.prediction import variants
    from kp_science.simulator import effects, study

    assert vocabulary.ARM_CODES == {"ketamine": 0.5, "midazolam": -0.5}
    assert variants.ARM_CODES is vocabulary.ARM_CODES
    assert group.ARM_CODE is vocabulary.ARM_CODES
    assert effects.ARMS is vocabulary.ARMS
    assert study.SESSIONS is vocabulary.SESSIONS and study.TASKS is vocabulary.TASKS
    assert task_runs.EVENT_TASKS is vocabulary.EVENT_TASKS
    assert sensors.EXPECTED_TASKS is vocabulary.TASKS
    assert set(vocabulary.EVENT_TASKS) < set(vocabulary.TASKS)
