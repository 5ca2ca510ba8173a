"""A corpus of damaged studies, run through the whole pipeline once.

One simulated study in which every participant but a few controls is damaged in its own way
— images, sidecars, masks, confounds, events, the participants and phenotype tables,
folders and links — before the first run, and a further set damaged *between* two runs
(files corrupted, changed or removed, a folder withdrawn). ``kp demo``'s
``materialize_study`` runs it twice on one Dagster instance. For every case:

- the failing participant's message names the file and the problem;
- the other participants complete (every control is current and in every group model);
- the damaged participant is in no group model: ``participant_status`` says why, the
  elastic net lists it in ``enet_exclusions`` and has no prediction for it, the group
  DCM's n counts only current participants, and the warehouse views hide its rows
  (``all_rows.<table>`` keeps them).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from tests.conftest import DAMAGES, _run, cores_per_process

# what a case expects: the participant fails (its run names the file), is skipped by
# discovery, or is imaged fine but has clinical values no model may use
FAILS, SKIPPED, CLINICAL, CHANGED = "fails", "skipped", "clinical", "changed"
N_CONTROLS = 8
Damage = Callable[[Path, str], tuple[Path, str]]


@dataclass(frozen=True)
class Case:
    name: str
    damage: Damage
    expect: str = FAILS
    between_runs: bool = False


# --- damages beyond tests/conftest.py's DAMAGES -------------------------------------------------


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def bold_not_gzip(root, pid):
    path = _run(root, pid, task="rest").bold_path
    path.write_bytes(os.urandom(4096))
    return path, "corrupt"


def sidecar_invalid_json(root, pid):
    path = _run(root, pid).sidecar_path
    path.write_text('{"RepetitionTime": 2.0,')
    return path, "not valid JSON"


def sidecar_not_object(root, pid):
    path = _run(root, pid).sidecar_path
    path.write_text("[2.0]")
    return path, "not a JSON object"


def sidecar_tr_text(root, pid):
    path = _run(root, pid, task="conflict").sidecar_path
    _edit_json(path, lambda d: d | {"RepetitionTime": "2s"})
    return path, "RepetitionTime must be a positive number"


def sidecar_task_name(root, pid):
    path = _run(root, pid, task="rest").sidecar_path
    _edit_json(path, lambda d: d | {"TaskName": "faces"})
    return path, "TaskName"


def mask_missing(root, pid):
    path = _run(root, pid).mask_path
    path.unlink()
    return path, "missing"


def _rewrite_mask(root, pid, change) -> Path:
    import nibabel as nib

    path = _run(root, pid, task="rest").mask_path
    img = nib.load(path)
    data, affine = change(np.asarray(img.dataobj), img.affine.copy())
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), path)
    return path


def mask_empty(root, pid):
    return _rewrite_mask(root, pid, lambda d, a: (np.zeros_like(d), a)), "brain mask is empty"


def mask_wrong_grid(root, pid):
    return _rewrite_mask(root, pid, lambda d, a: (d[:-1], a)), "does not match BOLD grid"


def mask_shifted(root, pid):
    def shift(d, a):
        a[:3, 3] += 8.0
        return d, a

    return _rewrite_mask(root, pid, shift), "affine differs"


def confounds_empty(root, pid):
    path = _run(root, pid, task="rest").confounds_path
    path.write_text("")
    return path, "confounds"


def events_binary(root, pid):
    path = _run(root, pid, task="conflict").events_path
    path.write_bytes(b"\xff\xfe\x00garbage\x00" * 20)
    return path, "events"


def events_negative_duration(root, pid):
    path = _run(root, pid).events_path
    events = pd.read_csv(path, sep="\t")
    events.loc[events.index[0], "duration"] = -1.0
    events.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path, "negative duration"


def bold_names_other_participant(root, pid):
    run = _run(root, pid, task="rest")
    wrong = run.bold_path.with_name(run.bold_path.name.replace(pid, "sub-zz" + pid[4:]))
    run.bold_path.rename(wrong)
    return wrong, "names"


def bold_link_without_content(root, pid):
    # a DataLad/git-annex link whose content was never fetched
    path = _run(root, pid, task="conflict").bold_path
    path.unlink()
    path.symlink_to(root / ".git" / "annex" / "objects" / "XX" / "missing.nii.gz")
    return path, "missing"


def folder_symlink_loop(root, pid):
    folder = root / pid
    shutil.rmtree(folder)
    folder.symlink_to(folder)
    return folder, "loop"


def folder_links_outside(root, pid):
    folder = root / pid
    outside = root.parent / f"outside-{pid}"
    shutil.move(folder, outside)
    folder.symlink_to(outside)
    return folder, "outside"


def _set_score(root, pid, value) -> tuple[Path, str]:
    path = root / "phenotype" / "caps5.tsv"
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    row = table.index[(table["participant_id"] == pid) & (table["session"] == "post")][0]
    table.loc[row, "caps5_total"] = str(value)
    table.to_csv(path, sep="\t", index=False)
    return path, str(value)


def caps5_impossible_high(root, pid):
    return _set_score(root, pid, 999)


def caps5_negative(root, pid):
    return _set_score(root, pid, -5)


# between two runs


def folder_withdrawn(root, pid):
    folder = root / pid
    shutil.move(folder, root.parent / f"withdrawn-{pid}")
    return folder, "no longer in the study"


def confounds_edited_not_rerun(root, pid):
    path = _run(root, pid, task="rest").confounds_path
    path.write_text(path.read_text().replace("\n", "\n", 1))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    return root / pid, "changed since"


# Permission damages need a reader that chmod stops: as root (CI) nothing is, and the
# pipeline's worker processes cannot be patched; tests/science/study/test_validate.py covers them.
_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
CASES = (
    [
        Case(name, damage)
        for name, damage in sorted(DAMAGES.items())
        if not (_AS_ROOT and name.startswith("unreadable_"))
    ]
    + [
        Case(f.__name__, f)
        for f in (
            bold_not_gzip,
            sidecar_invalid_json,
            sidecar_not_object,
            sidecar_tr_text,
            sidecar_task_name,
            mask_missing,
            mask_empty,
            mask_wrong_grid,
            mask_shifted,
            confounds_empty,
            events_binary,
            events_negative_duration,
            bold_names_other_participant,
            bold_link_without_content,
        )
    ]
    + [Case(f.__name__, f, SKIPPED) for f in (folder_symlink_loop, folder_links_outside)]
    + [Case(f.__name__, f, CLINICAL) for f in (caps5_impossible_high, caps5_negative)]
    + [
        Case(f"{name}_between_runs", DAMAGES[name], between_runs=True)
        for name in ("truncate_bold", "remove_events", "confounds_short")
    ]
    + [
        Case("mask_missing_between_runs", mask_missing, between_runs=True),
        Case("folder_withdrawn_between_runs", folder_withdrawn, SKIPPED, between_runs=True),
        Case("folder_symlink_loop_between_runs", folder_symlink_loop, SKIPPED, between_runs=True),
        Case("confounds_edited_not_rerun", confounds_edited_not_rerun, CHANGED, between_runs=True),
    ]
)


def test_the_corpus_has_at_least_40_cases():
    assert len(CASES) >= 40, len(CASES)
    assert len({c.name for c in CASES}) == len(CASES)


# --- one study, two runs -----------------------------------------------------------------------


@dataclass
class Outcome:
    study: Path
    warehouse: Path
    pids: dict[str, str]  # case name -> participant
    expected: dict[str, tuple[Path, str]]  # case name -> (path named, phrase)
    failed: dict[str, str]  # participant -> message (either run)
    status: pd.DataFrame
    predictions: pd.DataFrame
    exclusions: pd.DataFrame
    summary: pd.DataFrame
    dcm_n: dict[str, int]
    view_participants: set[str]
    all_rows_participants: set[str]
    controls: list[str]


def _query(warehouse: Path, sql: str) -> pd.DataFrame:
    from kp_resources.warehouse import query

    return query(warehouse, sql)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    from kp_assets.materialize import materialize_study
    from kp_resources.prediction_models import PredictionModels
    from kp_science.simulator import simulate_study

    base = tmp_path_factory.mktemp("corpus")
    n = len(CASES) + N_CONTROLS
    study = Path(
        simulate_study(
            base / "study",
            participants=n,
            seed=5,
            voxel_size=8.0,
            volumes=60,
            progress=False,
            jobs=cores_per_process(),
        )
    )
    pids = sorted(p.name for p in study.glob("sub-*"))
    controls = pids[:N_CONTROLS]
    by_case = {case.name: pid for case, pid in zip(CASES, pids[N_CONTROLS:], strict=True)}
    expected = {c.name: c.damage(study, by_case[c.name]) for c in CASES if not c.between_runs}

    warehouse = base / "warehouse"
    # Both runs in this process on one in-memory instance, which participant_status reads the
    # failures from. A stored (sqlite) instance with worker processes costs the corpus's ~60
    # runs about 40 s more CPU; tests/assets/test_cli.py's demo run covers workers recording a
    # failure into a stored instance.
    instance = dg.DagsterInstance.ephemeral()
    options = dict(
        jobs=1,
        log=lambda _: None,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        prediction=PredictionModels(
            min_participants=5, n_permutations=0, n_bootstraps=0, nested=False
        ),
    )
    failed = materialize_study(study, warehouse, instance, **options)
    later = [c for c in CASES if c.between_runs]
    for case in later:
        expected[case.name] = case.damage(study, by_case[case.name])
    rerun = [by_case[c.name] for c in later if c.expect != CHANGED]
    failed |= materialize_study(study, warehouse, instance, only=rerun, **options)

    def participants_of(sql: str) -> set[str]:
        return set(_query(warehouse, sql)["participant_id"])

    effects = _query(
        warehouse,
        "SELECT analysis, max(n_participants) AS n FROM dcm_group_effects GROUP BY analysis",
    )
    return Outcome(
        study=study,
        warehouse=warehouse,
        pids=by_case,
        expected=expected,
        failed=failed,
        status=_query(warehouse, "SELECT * FROM participant_status").set_index("participant_id"),
        predictions=_query(warehouse, "SELECT * FROM enet_predictions"),
        exclusions=_query(warehouse, "SELECT * FROM enet_exclusions"),
        summary=_query(warehouse, "SELECT * FROM enet_summary").set_index("model"),
        dcm_n=dict(zip(effects["analysis"], effects["n"].astype(int), strict=True)),
        view_participants=participants_of("SELECT DISTINCT participant_id FROM scans"),
        all_rows_participants=participants_of("SELECT DISTINCT participant_id FROM all_rows.scans"),
        controls=controls,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_damaged_participant_is_named_and_in_no_group_model(corpus: Outcome, case: Case):
    pid = corpus.pids[case.name]
    path, phrase = corpus.expected[case.name]
    status = corpus.status.loc[pid] if pid in corpus.status.index else None
    if case.expect == FAILS:
        message = corpus.failed.get(pid, "")
        assert str(path) in message and phrase.lower() in message.lower(), (pid, message)
        assert status is not None and status["status"] == "failed", status
        assert str(path) in status["reason"]
    elif case.expect == SKIPPED:
        assert pid not in corpus.failed  # never run on what is left of it
        assert status is not None and status["status"] == "withdrawn", status
        assert str(path) in status["reason"] and phrase in status["reason"], status["reason"]
    elif case.expect == CHANGED:
        assert status["status"] == "changed" and phrase in status["reason"], status
    else:  # imaging fine, clinical value rejected naming the file, row and value
        assert status["status"] == "current"
        reasons = corpus.exclusions.loc[corpus.exclusions["participant_id"] == pid, "reason"]
        assert len(reasons) and path.name in reasons.iloc[0] and phrase in reasons.iloc[0], (
            reasons.tolist()
        )

    assert pid not in set(corpus.predictions["participant_id"])
    if case.expect != CLINICAL:
        assert pid not in corpus.view_participants  # hidden from the views, kept in all_rows
        excluded = corpus.exclusions[corpus.exclusions["participant_id"] == pid]
        fitted = corpus.summary.index[corpus.summary["status"] == "ok"]
        assert set(excluded["model"]) == set(fitted) and len(fitted) >= 3, excluded
        if case.between_runs:  # processed once: its rows are kept, flagged not current
            assert pid in corpus.all_rows_participants


def test_every_control_completes_and_is_in_every_model(corpus: Outcome):
    assert not set(corpus.controls) & set(corpus.failed), corpus.failed
    assert (corpus.status.loc[corpus.controls, "status"] == "current").all()
    assert set(corpus.controls) <= corpus.view_participants
    main = corpus.predictions[corpus.predictions["model"] == "main"]
    assert set(main["participant_id"]) == set(corpus.controls)
    assert corpus.summary.loc["main", "n_participants"] == N_CONTROLS
    # the group DCM: the controls alone (every damaged participant is left out)
    assert corpus.dcm_n == {"longitudinal": N_CONTROLS, "baseline": N_CONTROLS}


def test_kp_sql_says_who_is_hidden(corpus: Outcome, capsys: pytest.CaptureFixture):
    from kp_assets.cli import main

    assert (
        main(
            [
                "sql",
                "--warehouse",
                str(corpus.warehouse),
                "SELECT count(DISTINCT participant_id) AS n FROM scans",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert out.split()[-1] == str(len(corpus.view_participants))
    hidden = (corpus.status["status"] != "current").sum()
    assert f"{hidden} participant(s) not current, hidden" in err
