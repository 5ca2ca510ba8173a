"""A tiny code location for the run-worker tests: a job that records the process it ran in,
and one that waits (to be terminated)."""

import os
import time

import dagster as dg


@dg.op
def record_pid(context: dg.OpExecutionContext) -> int:
    context.log.info(f"pid {os.getpid()}")
    context.add_output_metadata({"pid": os.getpid()})
    return os.getpid()


@dg.op
def wait_long() -> None:
    time.sleep(120)


@dg.job(executor_def=dg.in_process_executor)
def which_process():
    record_pid()


@dg.job(executor_def=dg.in_process_executor)
def long_wait():
    wait_long()


defs = dg.Definitions(jobs=[which_process, long_wait])
