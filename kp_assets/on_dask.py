"""kp's definitions with every step executed on a Dask cluster (``dagster-dask``'s executor).

Load this module instead of ``kp_assets.definitions`` (``make ui-dask`` or
``dagster dev -m kp_assets.on_dask``): the same assets, jobs, sensor and resources; only the
executor differs. Each step of a run becomes a Dask task, so one run's steps (and the runs the
queue lets through) spread over the cluster's workers.

Where the cluster is, from the environment when the code location loads:

- ``KP_DASK_SCHEDULER`` unset or ``local``: a local cluster per run, ``KP_DASK_WORKERS`` worker
  processes (default 2) with one thread each, listening on 127.0.0.1 only, no dashboard;
- ``KP_DASK_SCHEDULER=tcp://host:8786``: an existing scheduler (``dask scheduler`` +
  ``dask worker`` on the lab's machines).

A run can override it in the launchpad with the executor's own configuration::

    execution:
      config:
        cluster:
          existing:
            address: tcp://dask-scheduler.lab:8786

Every worker must import ``kp_assets`` (same code, same environment variables
``KP_STUDY_DIR``/``KP_WAREHOUSE_DIR``/``DAGSTER_HOME``: the study and warehouse resources
take their folders from ``dg.EnvVar`` on the worker when the variables were set where the
code location loaded, see :mod:`kp_resources.locations`) and reach the study folder, the
warehouse and the instance storage at the same paths: a shared filesystem and, across
machines, the PostgreSQL instance (``dagster.postgres.yaml``).

A run on Dask writes the same tables as a run in process, value for value
(``bench/dask_scale.py``, ``tests/system/test_dask.py``), because both compute every step
with one BLAS thread (:func:`kp_assets.materialize.one_blas_thread`): OpenBLAS's SVD, for one,
returns other last digits with two threads than with one. Dask's nanny starts its workers
with ``OMP_NUM_THREADS=1`` and its kin, and each step also limits the BLAS libraries loaded
by then; workers a lab starts with ``--no-nanny`` should have those variables set. (Workers
on a different CPU model may still differ in the last digits: BLAS kernels differ between
processors.)
"""

import importlib
import os

import dagster as dg
import dask.distributed
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._utils import iterate_with_context
from dagster_dask import dask_executor
from dagster_dask.executor import (
    DaskExecutor,
    get_dask_resource_requirements,
    query_on_dask_worker,
)

from kp_assets import definitions as _project
from kp_resources.locations import protocol_file, study_root, warehouse_root


class _Packed:
    """Arguments handed to a Dask task unexamined. Current dask (the task-spec rewrite of late
    2024) has ``Client.submit`` walk every tuple among its arguments looking for futures, and
    Dagster's run and plan records are tuples underneath that refuse iteration ("Iteration is
    not allowed on `@record`"), so dagster-dask 0.29's own executor fails on every partitioned
    run; a plain object is left alone."""

    def __init__(self, *values):
        self.values = values


def _step_on_worker(dependencies: list, packed: _Packed):
    from threadpoolctl import threadpool_limits

    # one BLAS thread, as in every kp process (see kp_assets.materialize.one_blas_thread):
    # Dask's nanny starts workers so, this covers workers started without it
    with threadpool_limits(1):
        return query_on_dask_worker(dependencies, *packed.values)


def dask_task_key(run_id: str, job_name: str, step_key: str) -> str:
    """The Dask key of one step of one run: ``<job>.<step>-<run id>``.

    Dask treats a submitted key that the scheduler already holds as the same task and hands
    back its result, so the key must differ between runs: two runs of one job on a shared
    scheduler (two participants' ``participant_assets``) would otherwise receive each other's
    step results and one partition would never be computed. (dagster-dask's own key,
    ``<job>.<step>``, has that fault.) The dashboard groups tasks by the part before the run
    id (Dask's ``key_split``), so it shows ``participant_assets.scans`` etc.
    """
    return f"{job_name}.{step_key}-{run_id}"


def submit_steps(
    client: dask.distributed.Client,
    plan_context: PlanOrchestrationContext,
    execution_plan: ExecutionPlan,
) -> dict[str, dask.distributed.Future]:
    """Submit every step of the plan to Dask, each waiting for the tasks of the steps it reads
    from; returns ``{step key: future of the step's events}``."""
    instance_ref = plan_context.instance.get_ref()
    futures: dict[str, dask.distributed.Future] = {}
    for level in execution_plan.get_steps_to_execute_by_level():
        for step in level:
            dependencies = [
                futures[key]
                for step_input in step.step_inputs
                for key in step_input.dependency_keys
            ]
            futures[step.key] = client.submit(
                _step_on_worker,
                dependencies,
                _Packed(
                    plan_context.reconstructable_job,
                    plan_context.dagster_run,
                    plan_context.run_config,
                    [step.key],
                    instance_ref,
                    execution_plan.known_state,
                ),
                key=dask_task_key(plan_context.run_id, plan_context.job_name, step.key),
                resources=get_dask_resource_requirements(step.tags),
            )
    return futures


class _KpDaskExecutor(DaskExecutor):
    """dagster-dask's executor, submitting each step with its arguments packed (see
    :class:`_Packed`) under a key unique to the run (:func:`dask_task_key`); everything else
    (clusters, config, resource tags) is dagster-dask's."""

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan):
        from dagster._core.errors import raise_execution_interrupts

        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError(
                "Dask execution requires a persistent DagsterInstance (DAGSTER_HOME)"
            )
        cluster = self._make_cluster(plan_context.job_name)
        try:
            with dask.distributed.Client(cluster) as client:
                futures = submit_steps(client, plan_context, execution_plan)
                done = dask.distributed.as_completed(list(futures.values()), with_results=True)
                for _future, events in iterate_with_context(raise_execution_interrupts, done):
                    yield from events
        finally:
            if not isinstance(cluster, str):  # a cluster made for this run
                cluster.close()

    def _make_cluster(self, job_name: str):
        if self.cluster_type == "existing":
            return self.cluster_configuration["address"]
        module, name = _CLUSTER_CLASSES[self.cluster_type]
        return getattr(importlib.import_module(module), name)(**self.build_dict(job_name))


# dagster-dask's cluster kinds (the batch-system ones need dask-jobqueue, yarn dask-yarn,
# kube dask-kubernetes installed)
_CLUSTER_CLASSES = {
    "local": ("dask.distributed", "LocalCluster"),
    "ssh": ("dask.distributed", "SSHCluster"),
    "yarn": ("dask_yarn", "YarnCluster"),
    "pbs": ("dask_jobqueue", "PBSCluster"),
    "moab": ("dask_jobqueue", "MoabCluster"),
    "sge": ("dask_jobqueue", "SGECluster"),
    "lsf": ("dask_jobqueue", "LSFCluster"),
    "slurm": ("dask_jobqueue", "SLURMCluster"),
    "oar": ("dask_jobqueue", "OARCluster"),
    "kube": ("dask_kubernetes", "KubeCluster"),
}


@dg.executor(
    name="dask",
    requirements=dg.multiple_process_executor_requirements(),
    config_schema=dask_executor.config_schema.as_field(),
)
def _kp_dask_executor(init_context) -> _KpDaskExecutor:
    ((cluster_type, cluster_configuration),) = init_context.executor_config["cluster"].items()
    return _KpDaskExecutor(cluster_type, cluster_configuration)


def dask_cluster_from_env() -> dict:
    """The ``cluster`` executor config the environment asks for (see the module docstring)."""
    address = os.environ.get("KP_DASK_SCHEDULER", "local").strip() or "local"
    if address != "local":
        return {"existing": {"address": address}}
    workers = int(os.environ.get("KP_DASK_WORKERS", "2"))
    return {
        "local": {
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
    }


def _cluster(config: dict) -> dict:
    return {"cluster": config["cluster"]}


kp_dask_executor = _kp_dask_executor.configured(
    _cluster,
    name="dask",
    config_schema={
        "cluster": dg.Field(
            dg.Permissive(),
            is_required=False,
            default_value=dask_cluster_from_env(),
            description="dagster-dask's cluster config: {local: {...LocalCluster arguments}} or "
            "{existing: {address: tcp://host:8786}}; default from KP_DASK_SCHEDULER "
            "and KP_DASK_WORKERS.",
        )
    },
)

# the project's definitions with this executor instead of the in-process one
defs = _project.build_definitions(
    study_root(), warehouse_root(), protocol_file(), executor=kp_dask_executor
)
