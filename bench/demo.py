"""Benchmark: ``kp demo --voxel-size 2`` (the default study at fMRIPrep's 2 mm MNI grid) against
the 4 mm demo measured in the same run.

Each demo is the real command (``python -m kp_assets.cli demo``) in a subprocess, into a new
scratch folder of its own (study, warehouse and Dagster storage; deleted afterwards unless
``--keep``). Printed per voxel size: the simulation's and the materialization's wall time (the
simulation ends when the demo prints "materializing assets into"), the peak memory of the
demo's whole process tree (the sum of its processes' proportional set sizes, sampled every
0.5 s: shared pages counted once), the study's size on disk; and each 2 mm figure's ratio to
the 4 mm one. The 4 mm demo runs first, so the numba kernels' on-disk cache is warm for both
once it has been filled.

    .venv/bin/python bench/demo.py [--participants 21] [--voxel-size 2] [--keep]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BASELINE_MM = 4.0
SIMULATED_LINE = "materializing assets into"  # the demo's first line after the simulation
# a 2 mm study holds about 8 times the 4 mm one's voxels: 0.98 GB × 8, with room to spare
STUDY_GB_PER_PARTICIPANT_AT_4_MM = 0.98 / 21


@dataclass
class DemoRun:
    voxel_size: float
    simulation_s: float
    materialization_s: float
    peak_simulation_gb: float
    peak_materialization_gb: float
    study_gb: float

    @property
    def total_s(self) -> float:
        return self.simulation_s + self.materialization_s

    @property
    def peak_gb(self) -> float:
        return max(self.peak_simulation_gb, self.peak_materialization_gb)


class TreeMemory:
    """The peak, over samples every ``interval`` s, of the summed proportional set size of a
    process and its descendants; ``mark()`` starts a new phase (peaks are kept per phase)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peaks = [0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tree_bytes(self) -> int:
        total = 0
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for process in processes:
            try:
                total += process.memory_full_info().pss
            except psutil.Error:  # ended between the listing and the reading
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peaks[-1] = max(self.peaks[-1], self._tree_bytes())

    def mark(self) -> None:
        self.peaks.append(0)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_demo(voxel_size: float, participants: int, scratch: Path) -> DemoRun:
    """``kp demo --voxel-size`` into ``scratch`` (study/, warehouse/, storage/), timed."""
    env = os.environ | {
        "KP_STUDY_DIR": str(scratch / "study"),
        "KP_WAREHOUSE_DIR": str(scratch / "warehouse"),
        "DAGSTER_HOME": str(ROOT),  # the repository's dagster.yaml, its storage in scratch
        "KP_DAGSTER_STORAGE": str(scratch / "storage"),
        "PYTHONUNBUFFERED": "1",  # lines arrive as the demo prints them
    }
    env.pop("KP_PROTOCOL", None)
    command = [
        sys.executable,
        "-m",
        "kp_assets.cli",
        "demo",
        "--participants",
        str(participants),
        "--voxel-size",
        f"{voxel_size:g}",
    ]
    log = scratch / "demo.log"
    with log.open("w") as progress:  # the progress bars (stderr), kept for a failure
        start = time.perf_counter()
        demo = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=progress, text=True
        )
        memory = TreeMemory(demo.pid)
        simulated = None
        assert demo.stdout is not None
        for line in demo.stdout:
            if simulated is None and line.startswith(SIMULATED_LINE):
                simulated = time.perf_counter()
                memory.mark()
            progress.write(line)
        code = demo.wait()
        end = time.perf_counter()
        peaks = memory.stop()
    if code != 0 or simulated is None:
        raise RuntimeError(f"kp demo at {voxel_size:g} mm exited with {code}: see {log}")
    return DemoRun(
        voxel_size,
        simulated - start,
        end - simulated,
        peaks[0] / 1e9,
        peaks[-1] / 1e9,
        folder_size(scratch / "study") / 1e9,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=21)
    parser.add_argument("--voxel-size", type=float, default=2.0, help="mm (default 2)")
    parser.add_argument("--out", default="bench/out", help="where the scratch folders go")
    parser.add_argument("--keep", action="store_true", help="keep the studies and warehouses")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    factor = (BASELINE_MM / args.voxel_size) ** 3
    needed = STUDY_GB_PER_PARTICIPANT_AT_4_MM * args.participants * (1 + factor) * 1.2
    free = shutil.disk_usage(out).free / 1e9
    print(f"disk: {free:.1f} GB free at {out}, the two studies need about {needed:.1f} GB")
    if free < needed:
        print("not enough free disk space", file=sys.stderr)
        return 1
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    runs = []
    for voxel_size in (BASELINE_MM, args.voxel_size):
        scratch = Path(tempfile.mkdtemp(prefix=f"demo-{voxel_size:g}mm-", dir=out))  # ours
        try:
            run = run_demo(voxel_size, args.participants, scratch)
        finally:
            if not args.keep:
                shutil.rmtree(scratch, ignore_errors=True)
        runs.append(run)
        print(
            f"  {voxel_size:g} mm: simulation {run.simulation_s:.1f} s, materialization "
            f"{run.materialization_s:.1f} s, peak memory {run.peak_gb:.2f} GB, study "
            f"{run.study_gb:.2f} GB" + (f" (kept in {scratch})" if args.keep else "")
        )
    base, big = runs
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"\nkp demo, {args.participants} participants   {BASELINE_MM:g} mm (baseline)   "
        f"{args.voxel_size:g} mm   ratio"
    )
    rows = [
        ("simulation, s", base.simulation_s, big.simulation_s),
        ("materialization, s", base.materialization_s, big.materialization_s),
        ("total wall time, s", base.total_s, big.total_s),
        ("peak memory simulating, GB", base.peak_simulation_gb, big.peak_simulation_gb),
        (
            "peak memory materializing, GB",
            base.peak_materialization_gb,
            big.peak_materialization_gb,
        ),
        ("study on disk, GB", base.study_gb, big.study_gb),
    ]
    for name, a, b in rows:
        print(f"  {name:<30} {a:>10.2f}   {b:>10.2f}   {b / a:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
