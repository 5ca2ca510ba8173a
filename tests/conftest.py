"""Shared fixtures: one tiny simulated study per test session, copied by tests that damage it."""

import shutil
from pathlib import Path

import pytest

# Small enough to simulate and ingest in seconds: 8 mm voxels, 24 volumes per run.
TINY_STUDY = {"participants": 3, "seed": 0, "voxel_size": 8.0, "volumes": 24}


@pytest.fixture(scope="session")
def study_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean simulated study, shared by the whole session: never modify it."""
    from kp_assets.science.simulator import simulate_study

    out = tmp_path_factory.mktemp("shared") / "study"
    return Path(simulate_study(out, **TINY_STUDY))


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three participants, 4 mm voxels, 60 volumes: the smallest study the ROI cleaning and
    the task models run on (never modify it: copy it)."""
    from kp_assets.science.simulator import simulate_study

    return simulate_study(tmp_path_factory.mktemp("small") / "study", participants=3, seed=4,
                          voxel_size=4.0, volumes=60)


@pytest.fixture
def study_copy(study_root: Path, tmp_path: Path) -> Path:
    """A private copy of the simulated study that a test may damage."""
    return Path(shutil.copytree(study_root, tmp_path / "study"))


# --- ways to damage a study -------------------------------------------------------------------
# Each takes (study root, participant id), damages one run of that participant and returns
# (the file the error must name, a phrase the problem must contain).


def _run(root: Path, pid: str, task: str = "faces", session: str = "pre"):
    from kp_resources.study import find_runs

    return next(r for r in find_runs(root, pid) if r.task == task and r.session == session)


def truncate_bold(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).bold_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "truncated"


def truncate_gzip_trailer(root: Path, pid: str) -> tuple[Path, str]:
    # All voxels are still there; only the gzip CRC/length trailer is cut.
    path = _run(root, pid).bold_path
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    return path, "truncated"


def corrupt_bold_bytes(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).bold_path
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return path, "corrupt"


def sidecar_tr_mismatch(root: Path, pid: str) -> tuple[Path, str]:
    import json

    run = _run(root, pid)
    sidecar = json.loads(run.sidecar_path.read_text())
    sidecar["RepetitionTime"] = float(sidecar["RepetitionTime"]) + 0.5
    run.sidecar_path.write_text(json.dumps(sidecar))
    return run.bold_path, "disagrees with RepetitionTime"


def header_tr_mismatch(root: Path, pid: str) -> tuple[Path, str]:
    import nibabel as nib

    path = _run(root, pid, task="rest").bold_path
    img = nib.load(path)
    header = img.header.copy()
    zooms = list(header.get_zooms())
    zooms[3] = zooms[3] * 1.25
    header.set_zooms(zooms)
    nib.save(nib.Nifti1Image(img.get_fdata(), img.affine, header), path)
    return path, "disagrees with RepetitionTime"


def remove_events(root: Path, pid: str) -> tuple[Path, str]:
    run = _run(root, pid, task="conflict")
    run.events_path.unlink()
    return run.events_path, "events file is missing"


def negative_onset(root: Path, pid: str) -> tuple[Path, str]:
    import pandas as pd

    run = _run(root, pid)
    events = pd.read_csv(run.events_path, sep="\t")
    events.loc[events.index[-1], "onset"] = -3.0
    events.to_csv(run.events_path, sep="\t", index=False, na_rep="n/a")
    return run.events_path, "negative onset"


def drop_events_column(root: Path, pid: str) -> tuple[Path, str]:
    import pandas as pd

    run = _run(root, pid)
    events = pd.read_csv(run.events_path, sep="\t").drop(columns="trial_type")
    events.to_csv(run.events_path, sep="\t", index=False, na_rep="n/a")
    return run.events_path, "missing column(s) trial_type"


def bold_3d(root: Path, pid: str) -> tuple[Path, str]:
    import nibabel as nib

    path = _run(root, pid).bold_path
    img = nib.load(path)
    header = img.header.copy()
    first = img.slicer[..., 0]
    header.set_data_shape(first.shape)
    nib.save(nib.Nifti1Image(first.get_fdata(), img.affine, header), path)
    return path, "must be 4-D"


def confounds_short(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).confounds_path
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))
    return path, "rows but the BOLD run has"


def remove_sidecar(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).sidecar_path
    path.unlink()
    return path, "sidecar is missing"


def remove_confounds(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).confounds_path
    path.unlink()
    return path, "confounds file is missing"


DAMAGES = {
    f.__name__: f
    for f in (
        truncate_bold,
        truncate_gzip_trailer,
        corrupt_bold_bytes,
        sidecar_tr_mismatch,
        header_tr_mismatch,
        remove_events,
        negative_onset,
        drop_events_column,
        bold_3d,
        confounds_short,
        remove_sidecar,
        remove_confounds,
    )
}


@pytest.fixture
def damages() -> dict:
    """``{name: damage(root, pid) -> (path, problem phrase)}``; see the functions above."""
    return DAMAGES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test with a ``damage`` argument runs once per way of damaging a study."""
    if "damage" in metafunc.fixturenames:
        metafunc.parametrize("damage", sorted(DAMAGES))


# --- full-size studies for the recovery tests ------------------------------------------------
# One 21-participant study (and one --null study) at 4 mm, run through the whole pipeline once
# per test session; every recovery test reads its warehouse. About 2 minutes each on 2 cores.
RECOVERY_STUDY = {"participants": 21, "seed": 11, "voxel_size": 4.0}


def _pipeline_warehouse(base: Path, null: bool, **options) -> tuple[Path, Path]:
    import dagster as dg

    from kp_assets.materialize import materialize_study
    from kp_assets.science.simulator import simulate_study
    from kp_resources.prediction_models import PredictionModels

    study = simulate_study(base / "study", null=null, **(RECOVERY_STUDY | options))
    warehouse = base / "warehouse"
    failed = materialize_study(
        study, warehouse, dg.DagsterInstance.ephemeral(), log=lambda _: None,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        prediction=PredictionModels(n_permutations=19, n_bootstraps=20))
    assert failed == {}, failed
    return study, warehouse


SHARED_STUDIES = ("recovery_study", "null_study")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` (``make test``), run every test of one of the
    expensive session studies on the same worker, so each study is simulated and
    materialized once."""
    for item in items:
        for name in SHARED_STUDIES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
                break


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, before building its study, a test that xdist did not group (xdist tags a
    grouped test's id with @group; a pytest it does not work with leaves the id alone)."""
    if (getattr(item.config.option, "loadgroup", False)  # an xdist worker under loadgroup
            and item.get_closest_marker("xdist_group") and "@" not in item.nodeid):
        pytest.fail("pytest-xdist ignored this test's xdist_group: this pytest and "
                    "pytest-xdist do not work together (pytest-xdist issue 1386), and each "
                    "shared study would be built on every worker; install the versions "
                    "pyproject.toml allows", pytrace=False)


@pytest.fixture(scope="session")
def recovery_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(study folder, warehouse) of the simulated 21-participant study, fully materialized."""
    return _pipeline_warehouse(tmp_path_factory.mktemp("recovery"), null=False)


@pytest.fixture(scope="session")
def null_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(study folder, warehouse) of a simulated --null study (100 volumes per run, to keep
    the suite fast), fully materialized."""
    return _pipeline_warehouse(tmp_path_factory.mktemp("null"), null=True, volumes=100)
