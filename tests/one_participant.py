"""One simulated participant (8 mm voxels, 60 volumes: the least every participant asset runs
on), simulated once per test session and shared, read-only, by the operations tests."""

from pathlib import Path

import pytest

PID = "sub-01"


def one_participant_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kp_science.simulator import simulate_study

    study = tmp_path_factory.getbasetemp() / "one-participant" / "study"
    if not (study / "dataset_description.json").exists():
        simulate_study(
            study,
            participants=1,
            seed=3,
            voxel_size=8.0,
            volumes=60,
            progress=False,
            overwrite=True,
        )
    return study
