"""Shared fixtures: one tiny simulated study per test session, copied by tests that damage it."""

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def cores_per_process() -> int:
    """Cores one test process may keep busy: all of them when pytest runs alone, its share
    under pytest-xdist (``make test``: 2 workers on 2 cores, so 1 each). Fixtures pass it as
    ``jobs`` to the simulator and ``materialize_study``: more processes than cores only add
    process start-ups and contention."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    return max(1, (os.cpu_count() or 1) // workers)


# Under pytest-xdist, BLAS thread pools as large as the worker's share of the cores: the
# libraries size them from these variables when they load (numpy is not imported yet when
# pytest reads this file), and threads beyond the cores spin and cost CPU time. Only in the
# workers: the controller's environment, which the workers inherit, stays as it was.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, str(cores_per_process()))

# Small enough to simulate and ingest in seconds: 8 mm voxels, 24 volumes per run.
TINY_STUDY = {"participants": 3, "seed": 0, "voxel_size": 8.0, "volumes": 24}


# The simulator's designs need longer runs than the tiny study's 48 s to hold every condition
# the task contrasts need (a 20 s block of each face kind, every conflict trial sequence cC,
# cI, iC, iI), which scans requires of each events file: the tiny study gets short designs
# that do (its images are untouched; only the scans tests read it).
TINY_EVENTS = {
    "faces": {
        "onset": [4.0, 26.0],
        "duration": [16.0, 16.0],
        "trial_type": ["emotional", "neutral"],
    },
    "conflict": {
        "onset": [4.0, 7.0, 10.0, 13.0, 16.0, 19.0, 22.0],
        "duration": [1.0] * 7,
        "trial_type": [
            "congruent",
            "congruent",
            "incongruent",
            "incongruent",
            "congruent",
            "incongruent",
            "congruent",
        ],
    },
}


@pytest.fixture(scope="session")
def study_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean simulated study, shared by the whole session: never modify it."""
    import pandas as pd

    from kp_science.simulator import simulate_study

    out = Path(simulate_study(tmp_path_factory.mktemp("shared") / "study", **TINY_STUDY))
    for task, design in TINY_EVENTS.items():
        for path in out.glob(f"sub-*/ses-*/func/*_task-{task}_events.tsv"):
            pd.DataFrame(design).to_csv(path, sep="\t", index=False, float_format="%.3f")
    return out


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three participants, 4 mm voxels, 60 volumes: the smallest study the ROI cleaning and
    the task models run on (never modify it: copy it)."""
    from kp_science.simulator import simulate_study

    return simulate_study(
        tmp_path_factory.mktemp("small") / "study",
        participants=3,
        seed=4,
        voxel_size=4.0,
        volumes=60,
    )


@pytest.fixture
def study_copy(study_root: Path, tmp_path: Path) -> Path:
    """A private copy of the simulated study that a test may damage."""
    return Path(shutil.copytree(study_root, tmp_path / "study"))


# A persistent Dagster instance (sqlite) commits every event of every run, and each commit
# fsyncs: milliseconds of waiting and kernel time per event on disk, nothing on tmpfs. The
# tests that need one (the bad-input corpus, kill -9, `kp run`) keep its storage in memory; a
# killed process loses no more there than on disk (only a power cut would tell them apart).
TMPFS = Path("/dev/shm")


@pytest.fixture(scope="session")
def memory_root() -> Iterator[Path]:
    """A folder on tmpfs (a temporary folder on disk where there is none) for Dagster
    instance storage: make a folder of your own inside it (``tempfile.mkdtemp(dir=...)``).
    Removed when the session ends."""
    usable = TMPFS.is_dir() and os.access(TMPFS, os.W_OK | os.X_OK)
    root = Path(tempfile.mkdtemp(prefix="kp-tests-", dir=TMPFS if usable else None))
    yield root
    shutil.rmtree(root, ignore_errors=True)


# --- ways to damage a study -------------------------------------------------------------------
# Each takes (study root, participant id), damages one run of that participant and returns
# (the file the error must name, a phrase the problem must contain).


def _run(root: Path, pid: str, task: str = "faces", session: str = "pre"):
    from kp_science.study.layout import find_runs

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


def _edit_tsv(path: Path, edit) -> None:
    """Rewrite a TSV as ``edit(table)`` returns it, every other cell kept as the text it was."""
    import pandas as pd

    edit(pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)).to_csv(
        path, sep="\t", index=False
    )


def _set_cell(index: int, column: str, text: str):
    """An edit for :func:`_edit_tsv` setting ``column`` to ``text`` in the row at 0-based
    ``index`` (the file's row ``index + 1`` in the error messages)."""

    def edit(table):
        table.loc[index, column] = text
        return table

    return edit


def confounds_missing_column(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).confounds_path
    _edit_tsv(path, lambda t: t.drop(columns="white_matter"))
    return path, "missing column(s) white_matter, which the confound cleaning needs"


def confounds_text_value(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid, task="rest").confounds_path
    _edit_tsv(path, _set_cell(4, "trans_y", "0.1mm"))  # row 5
    return path, "row 5: trans_y is '0.1mm', not a number"


def confounds_nan_in_motion(root: Path, pid: str) -> tuple[Path, str]:
    # n/a in the middle of a motion column (fMRIPrep writes it only in derivatives' first row)
    path = _run(root, pid, task="conflict").confounds_path
    _edit_tsv(path, _set_cell(9, "rot_x", "n/a"))
    return path, "row 10: rot_x is n/a"


def confounds_inf(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).confounds_path
    _edit_tsv(path, _set_cell(6, "csf", "inf"))
    return path, "row 7: csf is 'inf': infinite values"


def confounds_fd_not_number(root: Path, pid: str) -> tuple[Path, str]:
    # scrubbing compares FD with its threshold: text there failed inside nilearn
    path = _run(root, pid).confounds_path
    _edit_tsv(path, _set_cell(3, "framewise_displacement", "high"))
    return path, "row 4: framewise_displacement is 'high', not a number"


def _rewrite_bold_float(path: Path, edit) -> None:
    """Save the run as float32 after ``edit(data, brain)`` (data: (x, y, z, t) in physical
    units, brain: boolean mask of the run's brain mask)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32)
    brain = nib.load(str(path).replace("desc-preproc_bold", "desc-brain_mask")).get_fdata() > 0
    edit(data, brain)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, img.affine, header), path)


def bold_all_zero(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid, task="rest").bold_path
    _rewrite_bold_float(path, lambda data, brain: data.fill(0.0))
    return path, "the BOLD image is all zero inside the brain mask"


def bold_all_nan(root: Path, pid: str) -> tuple[Path, str]:
    import numpy as np

    path = _run(root, pid).bold_path
    _rewrite_bold_float(path, lambda data, brain: data.fill(np.nan))
    return path, "every voxel inside the brain mask is NaN/inf in every volume"


def bold_zero_volume(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).bold_path
    _rewrite_bold_float(path, lambda data, brain: data[..., 12].fill(0.0))
    return path, "volume 12 (numbered from 0) is all zero inside the brain mask"


def bold_nan_volumes(root: Path, pid: str) -> tuple[Path, str]:
    import numpy as np

    def edit(data, brain):
        x, y, z = np.nonzero(brain)
        for volume, voxels in ((3, range(0, 6)), (4, range(6, 12)), (5, range(12, 17))):
            for v in voxels:
                data[x[v], y[v], z[v], volume] = np.inf if v == 0 else np.nan

    path = _run(root, pid, task="conflict", session="post").bold_path
    _rewrite_bold_float(path, edit)
    return path, "17 non-finite voxel values (NaN/inf) inside the brain mask in volume(s) 3–5"


def unreadable_bold(root: Path, pid: str) -> tuple[Path, str]:
    # an intact file the pipeline may not read: was reported as "corrupt or truncated"
    path = _run(root, pid).bold_path
    path.chmod(0)
    return path, "permission denied: cannot read the image"


def unreadable_events(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid, task="conflict").events_path
    path.chmod(0)
    return path, "permission denied: cannot read the events file"


def events_misspelt_trial_type(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid, task="conflict").events_path
    _edit_tsv(path, _set_cell(1, "trial_type", "Congruent"))
    return path, (
        "row 2: trial_type 'Congruent' is not one of congruent, incongruent; "
        "did you mean 'congruent'?"
    )


def events_missing_condition(root: Path, pid: str) -> tuple[Path, str]:
    path = _run(root, pid).events_path
    _edit_tsv(path, lambda t: t[t["trial_type"] != "neutral"])
    return path, "no neutral trials: the faces contrast(s) emotional_vs_neutral"


def _run_end_s(run) -> float:
    import nibabel as nib

    header = nib.load(run.bold_path).header
    return header.get_data_shape()[3] * float(header.get_zooms()[3])


def onset_past_run_end(root: Path, pid: str) -> tuple[Path, str]:
    # an event 2 s after the last volume was never shown during the scan
    run = _run(root, pid)
    end = _run_end_s(run)
    _edit_tsv(run.events_path, _set_cell(1, "onset", f"{end + 2:.3f}"))
    return (
        run.events_path,
        f"row 2: onset {end + 2:g} s is not within the run: the run ends at {end:g} s",
    )


def event_ends_after_run(root: Path, pid: str) -> tuple[Path, str]:
    import pandas as pd

    run = _run(root, pid)
    end = _run_end_s(run)
    onset = float(pd.read_csv(run.events_path, sep="\t")["onset"].iloc[1])
    _edit_tsv(run.events_path, _set_cell(1, "duration", f"{end - onset + 6:.3f}"))
    return (
        run.events_path,
        f"row 2: the event ends at {end + 6:g} s (onset {onset:g} s + "
        f"duration {end - onset + 6:g} s), after the run",
    )


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
        confounds_missing_column,
        confounds_text_value,
        confounds_nan_in_motion,
        confounds_inf,
        confounds_fd_not_number,
        bold_all_zero,
        bold_all_nan,
        bold_zero_volume,
        bold_nan_volumes,
        unreadable_bold,
        unreadable_events,
        events_misspelt_trial_type,
        events_missing_condition,
        onset_past_run_end,
        event_ends_after_run,
    )
}


def _open_as_permissions_say(real_open):
    """``open`` refusing, like the kernel does for anyone but root, to read a file whose mode
    grants no read permission (the tests run as root, where chmod does not stop reads)."""

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike) and ("r" in mode or "+" in mode):
            try:
                st = os.stat(file)
            except OSError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode) and not st.st_mode & 0o444:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    return guarded_open


@pytest.fixture
def damages(monkeypatch: pytest.MonkeyPatch) -> dict:
    """``{name: damage(root, pid) -> (path, problem phrase)}``; see the functions above.

    While a test uses them, a file made unreadable (mode 0) cannot be opened even as root.
    """
    import builtins

    if os.geteuid() == 0:
        monkeypatch.setattr(builtins, "open", _open_as_permissions_say(builtins.open))
    return DAMAGES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test with a ``damage`` argument runs once per way of damaging a study."""
    if "damage" in metafunc.fixturenames:
        metafunc.parametrize("damage", sorted(DAMAGES))


# --- full-size studies for the recovery tests ------------------------------------------------
# One 21-participant study (and one --null study) at 4 mm, run through the whole pipeline once
# per test session; every recovery test reads its warehouse. About 2 minutes each on 2 cores.
RECOVERY_STUDY = {"participants": 21, "seed": 11, "voxel_size": 4.0}


def _pipeline_warehouse(base: Path, effect_scale: float, **options) -> tuple[Path, Path]:
    import dagster as dg

    from kp_assets.materialize import materialize_study
    from kp_resources.prediction_models import PredictionModels
    from kp_science.simulator import simulate_study

    jobs = cores_per_process()
    study = simulate_study(
        base / "study", effect_scale=effect_scale, jobs=jobs, **(RECOVERY_STUDY | options)
    )
    warehouse = base / "warehouse"
    failed = materialize_study(
        study,
        warehouse,
        dg.DagsterInstance.ephemeral(),
        jobs=jobs,
        log=lambda _: None,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        # the recovery tests read the fitted models, not their permutation p or nested LOO
        prediction=PredictionModels(n_permutations=0, n_bootstraps=0, nested=False),
    )
    assert failed == {}, failed
    return study, warehouse


SHARED_STUDIES = ("recovery_study", "null_study", "corpus")
# module-scoped fixtures that materialize a small study for several tests: their tests stay on
# one worker as well, or every worker that ran one of them would build it again
MODULE_STUDIES = ("two_layouts", "demo_warehouse", "small_warehouse", "findings")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``pytest -n N --dist loadgroup`` (``make test``), run every test of one of the
    expensive studies on the same worker, so each study is simulated and materialized once,
    and hand the long tests out first.

    xdist queues the groups first (largest first), then every other test in collection
    order, and gives a worker the next one as it runs out of work. The test files holding a
    slow test are moved to the front (each whole, in their order): the suite then ends on
    short tests on both workers, not on one worker finishing a minute-long test alone."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        shared = next((name for name in SHARED_STUDIES if name in names), None)
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared))
            # building one of these studies takes minutes: `make test-fast` leaves them out
            item.add_marker(pytest.mark.slow)
        elif module_study := next((name for name in MODULE_STUDIES if name in names), None):
            item.add_marker(pytest.mark.xdist_group(module_study))
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: files stay whole


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, before building its study, a test that xdist did not group (xdist tags a
    grouped test's id with @group; a pytest it does not work with leaves the id alone)."""
    if (
        getattr(item.config.option, "loadgroup", False)  # an xdist worker under loadgroup
        and item.get_closest_marker("xdist_group")
        and "@" not in item.nodeid
    ):
        pytest.fail(
            "pytest-xdist ignored this test's xdist_group: this pytest and "
            "pytest-xdist do not work together (pytest-xdist issue 1386), and each "
            "shared study would be built on every worker; install the versions "
            "pyproject.toml allows",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def recovery_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(study folder, warehouse) of the simulated 21-participant study, fully materialized."""
    return _pipeline_warehouse(tmp_path_factory.mktemp("recovery"), effect_scale=1.0)


@pytest.fixture(scope="session")
def null_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(study folder, warehouse) of a simulated --null study (runs as long as the recovery
    study's: a null result from shorter runs would say less), fully materialized."""
    return _pipeline_warehouse(tmp_path_factory.mktemp("null"), effect_scale=0.0)
