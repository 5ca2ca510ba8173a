"""A renaming changes no result: the same simulated images under another lab's names.

One small simulated study is materialized end to end twice: as the simulator wrote it (default
layout and protocol), and — through ``kp run``, as a lab would — renamed throughout by
:func:`tests.system.renamed_study.rename_study`
— task labels, session labels, arm column and values, trial types, contrast and DCM input
names, a ``run-1`` and a ``res-2`` entity, separate raw and derivatives roots, BIDS phenotype
with ``session_id``, a decoy ``space-T1w`` run — with a protocol declaring the new names.
Every table must hold the same numbers once the new names are mapped back.
"""

import re
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from kp_assets.cli import main
from kp_assets.materialize import materialize_study
from kp_resources.prediction_models import PredictionModels
from kp_resources.warehouse import list_tables
from kp_science.study.protocol import translate_names
from tests.conftest import cores_per_process
from tests.folder_snapshot import snapshot
from tests.system.renamed_study import ARMS, BACK, SESSIONS, rename_study

STUDY = {"participants": 4, "seed": 5, "voxel_size": 8.0, "volumes": 50}
# enough for every group model on four participants (both arms), and quick
PREDICTION = {"min_participants": 4, "n_permutations": 4, "n_bootstraps": 4, "nested": False}
# what legitimately differs: where files are, their hashes (renamed events and sidecars),
# wall-clock times and run ids
VOLATILE = re.compile(r".*(_path|sha256|seconds|_at|run_id|written)$")
SESSION_BACK = {new: old for old, new in SESSIONS.items()}
ARM_BACK = {new: old for old, new in ARMS.items()}


def _materialize(study: Path, warehouse: Path) -> None:
    failed = materialize_study(
        study,
        warehouse,
        dg.DagsterInstance.ephemeral(),
        jobs=1,  # in this process: no worker start-up for a handful of participants
        log=lambda _: None,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        prediction=PredictionModels(**PREDICTION),
    )
    assert failed == {}, failed


def _kp_run(protocol: Path, warehouse: Path, base: Path, storage: Path, monkeypatch, capsys) -> str:
    """``kp run`` of the renamed study (kp's own instance file, its storage in ``storage``,
    settings under ``base``); returns what it printed, after checking it wrote nothing into
    the study."""
    from kp_resources.locations import REPO_ROOT

    monkeypatch.setenv("DAGSTER_HOME", str(REPO_ROOT))
    monkeypatch.setenv("KP_DAGSTER_STORAGE", str(storage))
    for name in ("KP_PROTOCOL", "KP_WAREHOUSE_DIR", "KP_STUDY_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = base / "settings.yaml"
    settings.write_text(yaml.safe_dump({"prediction": PREDICTION}))
    derivatives = protocol.parent / "derivatives" / "fmriprep"
    before = snapshot(protocol.parent)
    code = main(
        ["run", "--study", str(derivatives), "--protocol", str(protocol)]
        + ["--warehouse", str(warehouse), "--settings", str(settings)]
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "materializing" in err  # the progress bar
    assert snapshot(protocol.parent) == before  # nothing written into the study's folders
    assert storage.exists()  # the runs are in the instance's storage
    return out


def _names_back(value: object) -> object:
    return translate_names(value, BACK) if isinstance(value, str) else value


def _names_in(value: object) -> object:
    """:func:`_names_back` of a string, or of every string in a tuple."""
    if isinstance(value, tuple):
        return tuple(_names_in(v) for v in value)
    return _names_back(value)


def _hashable(value: object) -> object:
    """Array cells (e.g. the DCM's parameter lists) as tuples, so rows can be sorted."""
    if isinstance(value, (list, np.ndarray)):
        return tuple(_hashable(v) for v in value)
    return value


def _comparable(table: pd.DataFrame, renamed: bool) -> pd.DataFrame:
    table = table.drop(columns=[c for c in table.columns if VOLATILE.fullmatch(c)])
    for column in table.columns:
        if table[column].dtype == object:
            table[column] = table[column].map(_hashable)
    if renamed:
        table = table.rename(columns=_names_back)
        for column in table.columns:
            if column == "session":
                table[column] = table[column].map(lambda s: SESSION_BACK.get(s, s))
            elif column == "arm":
                table[column] = table[column].map(lambda a: ARM_BACK.get(a, a))
            elif not pd.api.types.is_numeric_dtype(table[column]):
                table[column] = table[column].map(_names_in)
    keys = [c for c in table.columns if not pd.api.types.is_float_dtype(table[c])]
    table = table[sorted(table.columns)]
    return table.sort_values(sorted(keys), kind="stable").reset_index(drop=True)


def _table(warehouse: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(warehouse / name)


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory, memory_root) -> tuple[Path, Path, str]:
    from kp_science.simulator import simulate_study

    base = tmp_path_factory.mktemp("renaming")
    study = Path(simulate_study(base / "study", jobs=cores_per_process(), **STUDY))
    protocol = rename_study(study, base / "renamed")
    _materialize(study, base / "default-warehouse")
    # kp run's sqlite storage on tmpfs (tests/conftest.py): no fsync per stored event
    storage = Path(tempfile.mkdtemp(prefix="renamed-", dir=memory_root)) / "storage"
    with pytest.MonkeyPatch.context() as monkeypatch:
        printed = _kp_run(
            protocol, base / "renamed-warehouse", base, storage, monkeypatch, _Capture()
        )
    return base / "default-warehouse", base / "renamed-warehouse", printed


class _Capture:
    """``capsys``'s one method, for a module-scoped fixture (capsys is per test)."""

    def __init__(self) -> None:
        import contextlib
        import io

        self.out, self.err = io.StringIO(), io.StringIO()
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(contextlib.redirect_stdout(self.out))
        self._redirect.enter_context(contextlib.redirect_stderr(self.err))

    def readouterr(self) -> tuple[str, str]:
        self._redirect.close()
        return self.out.getvalue(), self.err.getvalue()


def test_kp_run_processed_every_participant_under_the_protocol(two_layouts):
    _, _, printed = two_layouts
    for pid in ("sub-01", "sub-02", "sub-03", "sub-04"):
        assert f"{pid} ok" in printed
    assert "kp-protocol.yaml" in printed  # which protocol it ran under


def test_the_renamed_study_uses_the_new_names(two_layouts):
    _, renamed, _ = two_layouts
    scans = _table(renamed, "scans")
    assert set(scans["task"]) == {"look", "stroop", "restingstate"}
    assert set(scans["session"]) == {"1", "2"} and set(scans["run"]) == {1}
    assert not scans["bold_path"].str.contains("space-T1w").any()  # the decoy is ignored
    assert scans["bold_path"].str.contains("_res-2_").all()
    assert scans["events_path"].dropna().str.contains("/rawdata/").all()
    assert set(_table(renamed, "clinical")["arm"]) == {"KET", "MID"}
    features = _table(renamed, "change_scores")["feature"]
    assert features.str.startswith(("look.", "stroop.", "restingstate.")).all()
    assert features.str.contains(r"\.threat_vs_calm$").any()


def test_every_table_holds_the_same_numbers(two_layouts):
    default, renamed, _ = two_layouts
    tables = sorted(set(list_tables(default)) - {"participant_status", "checks"})
    assert set(tables) <= set(list_tables(renamed))
    assert {"scans", "roi_activation", "session_features", "dcm_group_effects"} <= set(tables)
    assert {"enet_coefficients", "paper_table", "clinical"} <= set(tables)
    # the comparisons compare something: every measure, and findings read off both
    for name in ("roi_activation", "task_connectivity", "rest_connectivity", "dcm_parameters"):
        assert len(_table(default, name)) > 0, name
    assert _table(default, "paper_table")["estimate"].notna().sum() >= 3
    for name in tables:
        expected = _comparable(_table(default, name), renamed=False)
        got = _comparable(_table(renamed, name), renamed=True)
        assert len(got) == len(expected), name
        pd.testing.assert_index_equal(got.columns, expected.columns, obj=name)
        for column in expected.columns:
            if pd.api.types.is_float_dtype(expected[column]):
                np.testing.assert_allclose(
                    got[column].to_numpy(float),
                    expected[column].to_numpy(float),
                    rtol=1e-9,
                    atol=1e-12,
                    equal_nan=True,
                    err_msg=f"{name}.{column}",
                )
            else:
                pd.testing.assert_series_equal(
                    got[column], expected[column], check_dtype=False, obj=f"{name}.{column}"
                )
