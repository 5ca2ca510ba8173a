"""``kp simulate``, the demo's materialization and ``kp sql`` end to end on a tiny study."""

import json
import tempfile
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import pandas as pd
import pytest

from kp_assets.cli import main
from kp_assets.materialize import materialize_study
from kp_assets.partitions import participants
from kp_science.study.reading import sha256_file
from tests.bad_entries import BAD_ENTRIES, bad_entries
from tests.folder_snapshot import snapshot


class DemoRun(NamedTuple):
    study: Path
    warehouse: Path
    failed: dict[str, str]
    bad_file: Path
    log: list[str]
    partitions: list[str]


@pytest.fixture(scope="module")
def demo_warehouse(tmp_path_factory, small_study, memory_root) -> DemoRun:
    """The small study with sub-02's faces run truncated and three bad ``sub-*`` entries (a
    symbolic link loop, a link out of the study, an unreadable folder), materialized like
    ``kp demo``: participants in two worker processes, on a persistent (sqlite) instance."""
    import shutil

    from tests.conftest import truncate_bold

    base = tmp_path_factory.mktemp("demo")
    study = shutil.copytree(small_study, base / "study")
    bad_file, _ = truncate_bold(study, "sub-02")
    warehouse = base / "warehouse"
    # its storage on tmpfs (tests/conftest.py); the workers open it from its InstanceRef
    instance = dg.DagsterInstance.local_temp(tempfile.mkdtemp(prefix="demo-", dir=memory_root))
    log: list[str] = []
    with bad_entries(study, base / "outside"):
        failed = materialize_study(study, warehouse, instance, jobs=2, log=log.append)
    return DemoRun(
        study, warehouse, failed, bad_file, log, instance.get_dynamic_partitions(participants.name)
    )


@pytest.mark.slow  # demo_warehouse: the whole pipeline on the small study, ~20 s
def test_one_bad_participant_fails_alone(demo_warehouse):
    _, warehouse, failed, bad_file, *_ = demo_warehouse
    # sub-02 fails alone; with it, two participants remain: too few for the models
    assert list(failed) == ["group_assets", "sub-02"]
    assert "2 participants with both sessions" in failed["group_assets"]
    assert str(bad_file) in failed["sub-02"] and "truncated" in failed["sub-02"]
    assert sorted(p.name for p in (warehouse / "scans").iterdir()) == [
        "participant=sub-01",
        "participant=sub-03",
    ]
    assert (warehouse / "clinical" / "part-0.parquet").exists()
    assert (warehouse / "kp.duckdb").exists()


@pytest.mark.slow  # demo_warehouse: the whole pipeline on the small study, ~20 s
def test_the_failure_a_worker_stored_is_read_back_into_participant_status(demo_warehouse):
    """sub-02's participant job ran in a worker process, which stored its failure in the
    instance; the group job, in this process, reads it back as sub-02's status and reason
    (an instance that the workers did not share would leave it unexplained)."""
    from kp_resources.warehouse import query

    warehouse, bad_file = demo_warehouse.warehouse, demo_warehouse.bad_file
    status = query(warehouse, "SELECT * FROM participant_status").set_index("participant_id")
    assert status.loc["sub-02", "status"] == "failed", status.loc["sub-02"]
    assert str(bad_file) in status.loc["sub-02", "reason"]
    assert "truncated" in status.loc["sub-02", "reason"]
    assert (status.loc[["sub-01", "sub-03"], "status"] == "current").all(), status


@pytest.mark.slow  # demo_warehouse: the whole pipeline on the small study, ~20 s
def test_bad_entries_are_skipped_and_the_others_processed(demo_warehouse):
    """The same run as above: each bad ``sub-*`` entry is logged with its path and reason, is
    no partition and no failure; sub-01 and sub-03 are processed."""
    demo = demo_warehouse
    for name, reason in BAD_ENTRIES.items():
        prefix = f"  skipped {name!r} ({demo.study / name}): "
        assert any(line.startswith(prefix) and reason in line for line in demo.log), name
    assert demo.partitions == ["sub-01", "sub-02", "sub-03"]
    assert not set(BAD_ENTRIES) & set(demo.failed)
    assert sorted(line.split()[1] for line in demo.log if line.endswith(" ok")) == [
        "sub-01",
        "sub-03",
    ]


@pytest.mark.slow  # demo_warehouse: the whole pipeline on the small study, ~20 s
def test_kp_sql_formats(demo_warehouse, capsys):
    warehouse = demo_warehouse.warehouse
    sql = "SELECT participant_id, count(*) AS runs FROM scans GROUP BY 1 ORDER BY 1"
    assert main(["sql", sql, "--warehouse", str(warehouse), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"participant_id": "sub-01", "runs": 6},
        {"participant_id": "sub-03", "runs": 6},
    ]
    assert main(["sql", sql, "--warehouse", str(warehouse), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["participant_id,runs", "sub-01,6"]
    assert main(["sql", sql, "--warehouse", str(warehouse)]) == 0
    assert "sub-03" in capsys.readouterr().out


@pytest.mark.slow  # demo_warehouse: the whole pipeline on the small study, ~20 s
def test_provenance_is_queryable_through_kp_sql(demo_warehouse, capsys):
    warehouse = demo_warehouse.warehouse
    sql = (
        "SELECT key, value FROM provenance WHERE \"table\" = 'scans' "
        "AND file_name LIKE '%sub-01%' ORDER BY key"
    )
    assert main(["sql", sql, "--warehouse", str(warehouse), "--format", "json"]) == 0
    kv = {r["key"]: r["value"] for r in json.loads(capsys.readouterr().out)}
    assert kv["kp.asset_key"] == "scans" and kv["kp.partition"] == "sub-01"
    assert kv["kp.code_version"] and kv["kp.run_id"]
    sources = json.loads(kv["kp.source_sha256"])
    bold = next(
        p
        for p in sources
        if p.endswith("task-faces_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz")
    )
    assert sources[bold] == sha256_file(bold)
    assert "dagster" in json.loads(kv["kp.package_versions"])


@pytest.mark.slow  # demo_warehouse: the whole pipeline on the small study, ~20 s
def test_kp_sql_errors(demo_warehouse, tmp_path, capsys):
    warehouse = demo_warehouse.warehouse
    assert main(["sql", "SELECT nope FROM scans", "--warehouse", str(warehouse)]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["sql", "SELECT 1", "--warehouse", str(tmp_path / "empty")]) == 2
    assert "no tables" in capsys.readouterr().err


def test_kp_simulate_command(tmp_path, capsys):
    out = tmp_path / "study"
    assert (
        main(
            [
                "simulate",
                str(out),
                "--participants",
                "2",
                "--voxel-size",
                "8",
                "--volumes",
                "20",
                "--seed",
                "5",
                "--null",
                "--quiet",
            ]
        )
        == 0
    )
    assert "simulated 2 participants" in capsys.readouterr().out
    truth = json.loads((out / "derivatives/simulation-truth/simulation.json").read_text())
    assert truth["seed"] == 5 and truth["options"]["null"] is True and truth["effects"] == []
    assert len(pd.read_csv(out / "participants.tsv", sep="\t")) == 2


# --- kp run -----------------------------------------------------------------------------------


@pytest.fixture
def run_env(tmp_path, monkeypatch) -> Path:
    """kp's own dagster.yaml with its storage in ``tmp_path / 'storage'`` (returned); no
    protocol or warehouse from the environment."""
    from kp_resources.locations import REPO_ROOT

    monkeypatch.setenv("DAGSTER_HOME", str(REPO_ROOT))
    monkeypatch.setenv("KP_DAGSTER_STORAGE", str(tmp_path / "storage"))
    for name in ("KP_PROTOCOL", "KP_WAREHOUSE_DIR", "KP_STUDY_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "storage"


# `kp run` processing a whole study is tested on a renamed real layout in
# tests/system/test_renamed_study.py


def test_kp_run_refuses_bad_settings_naming_the_file_and_key(study_copy, tmp_path, run_env, capsys):
    settings = tmp_path / "settings.yaml"
    for text, problem in [
        (
            "prediction: {n_permutation: 5}\n",
            "prediction.n_permutation: not a field of "
            "PredictionModels; allowed: variants, min_participants",
        ),
        ("colour: {hue: 1}\n", "colour: not a resource to set; allowed: roi_set, cleaning"),
        ("roi_set: {radius_mm: wide}\n", "roi_set: 1 validation error for RoiSet"),
    ]:
        settings.write_text(text)
        code = main(["run", "--study", str(study_copy), "--settings", str(settings)])
        assert code == 1
        assert f"kp run: {settings}: {problem}" in capsys.readouterr().err
    assert not run_env.exists() and not (tmp_path / "warehouse").exists()


def test_kp_run_stops_without_a_study(tmp_path, run_env, capsys):
    assert main(["run", "--study", str(tmp_path / "nowhere")]) == 1
    assert f"kp run: no study folder at {tmp_path / 'nowhere'}" in capsys.readouterr().err
    assert not run_env.exists() and not (tmp_path / "warehouse").exists()


def test_kp_run_stops_at_a_protocol_error(study_copy, tmp_path, run_env, capsys):
    protocol = tmp_path / "mine.yaml"
    protocol.write_text("sessions: {baseline: pre, follow_up: pre}\n")
    assert main(["run", "--study", str(study_copy), "--protocol", str(protocol)]) == 1
    err = capsys.readouterr().err
    assert f"kp run: study protocol error: {protocol}: sessions: " in err
    assert not run_env.exists() and not (tmp_path / "warehouse").exists()


def test_kp_run_never_writes_into_the_study(study_copy, tmp_path, run_env, capsys):
    before = snapshot(study_copy)
    inside = study_copy / "derivatives" / "warehouse"
    assert main(["run", "--study", str(study_copy), "--warehouse", str(inside)]) == 1
    err = capsys.readouterr().err
    assert f"the warehouse {inside} is inside the study folder {study_copy}" in err
    assert snapshot(study_copy) == before and not run_env.exists()


def test_the_demo_summary_prints_whether_each_finding_is_supported(tmp_path, capsys):
    from kp_assets.cli import print_summary
    from kp_science.prediction import paper_table
    from tests.assets.seeded_warehouse import write_table

    summary = pd.DataFrame({"model": ["main"], "status": ["ok"], "permutation_p": [0.01]})
    coefficients = pd.DataFrame(
        {
            "model": ["main"],
            "term": ["faces.gppi.vmpfc->amygdala.emotional"],
            "beta_std": [2.0],
            "beta_fully_std": [0.2],
            "selection_frequency": [0.9],
        }
    )
    table = paper_table({"enet_summary": summary, "enet_coefficients": coefficients})
    write_table(tmp_path, "paper_table", table, partitioned=False)
    print_summary(tmp_path, "caps5")
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "finding" in line and "supported" in line)
    assert "permutation_p" in header and "pp" in header
    first = next(line for line in out.splitlines() if "vmpfc_amygdala_faces" in line)
    assert "True" in first  # supported
    assert out.count("False") >= 7  # the seven findings without evidence


def _parsers(parser=None, path=("kp",)):
    """(command path, parser) of kp and every subcommand, nested ones included."""
    import argparse

    from kp_assets.cli import build_parser

    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


# --- kp demo --voxel-size ---------------------------------------------------------------------


@pytest.fixture
def demo_steps(monkeypatch, run_env) -> list[tuple]:
    """``kp demo`` with its two expensive steps recorded instead of run: each simulate_study
    call as ("simulate", folder, options), each materialization as ("materialize", study,
    warehouse)."""
    from kp_assets import cli
    from kp_science import simulator

    steps: list[tuple] = []
    monkeypatch.setattr(
        simulator, "simulate_study", lambda out, **kw: steps.append(("simulate", out, kw))
    )
    monkeypatch.setattr(
        cli,
        "materialize_and_report",
        lambda command, study, warehouse, *_: steps.append(("materialize", study, warehouse)) or 0,
    )
    return steps


def test_kp_demo_voxel_size_has_its_own_default_folders_and_reaches_the_simulator(
    tmp_path, demo_steps, monkeypatch
):
    from kp_assets.cli import default_demo_study
    from kp_resources.locations import REPO_ROOT, warehouse_dir

    data = REPO_ROOT / "data"
    assert default_demo_study(None) == default_demo_study(4.0) == data / "study"
    assert default_demo_study(2.0) == data / "2mm" / "study"
    assert warehouse_dir(default_demo_study(2.0)) == data / "2mm" / "warehouse"

    study = tmp_path / "new"  # KP_STUDY_DIR wins over the default folder
    monkeypatch.setenv("KP_STUDY_DIR", str(study))
    assert main(["demo", "--voxel-size", "2", "--participants", "3"]) == 0
    options = {"participants": 3, "progress": True, "overwrite": True, "voxel_size": 2.0}
    assert demo_steps == [
        ("simulate", study, options),
        ("materialize", study, tmp_path / "warehouse"),
    ]


def test_kp_demo_refuses_a_study_simulated_at_another_voxel_size(
    study_copy, demo_steps, monkeypatch, capsys
):
    monkeypatch.setenv("KP_STUDY_DIR", str(study_copy))  # kp simulated it at 8 mm
    before = snapshot(study_copy)
    assert main(["demo", "--voxel-size", "2"]) == 2
    err = capsys.readouterr().err
    assert f"kp demo: {study_copy}: holds a study kp simulated at 8 mm, not the 2 mm" in err
    assert "data/2mm/study" in err and "--voxel-size 2 --overwrite" in err
    assert demo_steps == [] and snapshot(study_copy) == before
    # at its own voxel size, or without the option, it is the demo's study as it is
    for argv in (["demo", "--voxel-size", "8"], ["demo"]):
        assert main(argv) == 0
    assert [step[0] for step in demo_steps] == ["materialize", "materialize"]
    assert snapshot(study_copy) == before


@pytest.mark.parametrize("value", ["1", "9", "0", "-2", "nan", "two"])
def test_kp_demo_rejects_a_bad_voxel_size(value, demo_steps, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--voxel-size", value])
    assert stop.value.code == 2 and demo_steps == []
    err = capsys.readouterr().err
    assert f"argument --voxel-size: {value!r} is not a voxel size in mm from 2 to 8" in err


def test_kp_version_names_kp_and_its_packages(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"kp {importlib.metadata.version('kp')} (Python ")
    assert f"dagster {importlib.metadata.version('dagster')}" in out


def test_every_help_text_is_plain_text_with_examples_and_documented_options():
    import argparse

    seen = set()
    for path, parser in _parsers():
        seen.add(" ".join(path))
        text = parser.format_help()
        # no reStructuredText left: double backticks, roles such as :func:, bold markers
        for markup in ("``", ":func:", ":mod:", ":class:", ":data:", "**"):
            assert markup not in text, f"{' '.join(path)} --help shows {markup!r}"
        assert "examples:\n  " in text, f"{' '.join(path)} --help has no example"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), (
                f"{' '.join(path)}: {action.dest} undocumented"
            )
    assert {"kp simulate", "kp demo", "kp report", "kp export bids", "kp sql"} <= seen


def test_demo_help_names_the_environment_and_what_it_writes():
    parsers = dict(_parsers())
    text = parsers[("kp", "demo")].format_help()
    for name in (
        "KP_STUDY_DIR",
        "KP_WAREHOUSE_DIR",
        "KP_PROTOCOL",
        "DAGSTER_HOME",
        "KP_DAGSTER_STORAGE",
        "kp.duckdb",
        "study_report.html",
        "Parquet",
    ):
        assert name in text, f"kp demo --help does not name {name}"
    sql = " ".join(parsers[("kp", "sql")].format_help().split())
    assert "--format {table,csv,json}" in sql and "json: a list of records" in sql


@pytest.mark.slow  # demo_warehouse: the whole pipeline on the small study, ~20 s
def test_kp_report_writes_the_report_and_replaces_only_its_own(demo_warehouse, tmp_path, capsys):
    study, warehouse = demo_warehouse.study, demo_warehouse.warehouse
    # the catalog run drew it, though the group models failed: their sections say so
    drawn = (warehouse / "study_report.html").read_text()
    assert "sub-02" in drawn and "truncated" in drawn  # the exclusion and why
    where = ["--study", str(study), "--warehouse", str(warehouse)]
    out = tmp_path / "report.html"
    assert main(["report", str(out), *where]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    assert '<meta name="generator" content="kp ' in out.read_text()
    assert main(["report", str(out), *where]) == 0  # its own report: replaced

    mine = tmp_path / "notes.html"  # a file of the user's is never replaced
    mine.write_text("<html>my notes</html>")
    assert main(["report", str(mine), *where]) == 1
    assert "not a report kp wrote" in capsys.readouterr().err
    assert mine.read_text() == "<html>my notes</html>"
    inside = study / "report.html"  # nor is anything written into the study
    assert main(["report", str(inside), *where]) == 1
    assert "never writes into a study" in capsys.readouterr().err and not inside.exists()
    assert main(["report", "--warehouse", str(tmp_path / "empty"), "--study", str(study)]) == 1
    assert "no tables in warehouse" in capsys.readouterr().err


@pytest.mark.slow  # demo_warehouse: the whole pipeline on the small study, ~20 s
def test_kp_export_bids_writes_once_and_refuses_the_study(demo_warehouse, tmp_path, capsys):
    study, warehouse = demo_warehouse.study, demo_warehouse.warehouse
    where = ["--study", str(study), "--warehouse", str(warehouse), "--quiet"]
    out = tmp_path / "bids"
    assert main(["export", "bids", str(out), *where]) == 0
    first = capsys.readouterr().out
    assert "2 participants" in first and "0 unchanged" in first  # sub-02 failed: not current
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "kp"
    series = sorted(out.glob("sub-01/ses-*/func/*_seg-kp_stat-mean_timeseries.tsv"))
    assert series and all(s.with_suffix(".json").is_file() for s in series)
    assert main(["export", "bids", str(out), *where]) == 0  # again: nothing to write
    assert "0 files written" in capsys.readouterr().out
    inside = study / "derivatives" / "kp"
    assert main(["export", "bids", str(inside), *where]) == 1
    assert "never writes into a study" in capsys.readouterr().err and not inside.exists()
