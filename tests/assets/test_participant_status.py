"""``latest_runs``: each participant's latest run, from a few batched queries of the run
storage (not one per participant)."""

import dagster as dg
from dagster._core.test_utils import create_run_for_test

from kp_assets import participant_status
from kp_assets.participant_status import PARTITION_TAG, latest_runs

S = dg.DagsterRunStatus


def test_latest_run_of_each_participant_in_batches(monkeypatch):
    monkeypatch.setattr(participant_status, "_RUNS_PER_QUERY", 2)  # several batches
    instance = dg.DagsterInstance.ephemeral()
    history = {  # oldest first
        "sub-01": [S.FAILURE, S.SUCCESS],  # fixed by a rerun: not reported
        "sub-02": [S.SUCCESS, S.FAILURE],  # its rerun failed
        "sub-03": [S.SUCCESS, S.STARTED],  # rerunning now
        "sub-04": [S.CANCELED],
        "sub-05": [S.SUCCESS],
    }
    for pid, statuses in history.items():
        for status in statuses:
            create_run_for_test(instance, status=status, tags={PARTITION_TAG: pid})
    create_run_for_test(instance, status=S.FAILURE)  # a group run: no participant
    pids = [*history, "sub-06"]  # sub-06: never run
    found = latest_runs(instance, pids)
    assert sorted(found) == ["sub-02", "sub-03", "sub-04"]
    assert found["sub-02"][0] == "failed" and found["sub-04"][0] == "failed"
    assert found["sub-03"][0] == "processing" and "sub-03 is in progress" in found["sub-03"][1]
    assert latest_runs(instance, []) == {}
