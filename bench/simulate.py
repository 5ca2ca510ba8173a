"""Benchmark: simulate the default study (21 participants, 4 mm, faces 200, conflict 150 and
rest 140 volumes per run).

Target: under 60 s on 2 cores, under 1 GB on disk. Baseline measured in the same run: the
floor of writing the same number of bytes of the same kind of images — gzip-compressing
(ISA-L, level 1) and writing one participant's six int16 runs, times the participant count,
divided by the worker count. Prints wall time, size and the ratio to that floor.

    .venv/bin/python bench/simulate.py [--participants 21] [--out bench/out/study]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
from isal import igzip

from kp_science.simulator import is_simulated_study, simulate_study


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_floor(study: Path, participants: int, workers: int, scratch: Path) -> float:
    """Seconds to recompress and write one participant's runs, scaled to the whole study."""
    runs = sorted((study / "sub-01").rglob("*_desc-preproc_bold.nii.gz"))
    raw = [nib.load(r).to_bytes() for r in runs]  # uncompressed NIfTI bytes of each run
    scratch.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, data in enumerate(raw):
        (scratch / f"run{i}.nii.gz").write_bytes(igzip.compress(data, compresslevel=1))
    return (time.perf_counter() - start) * participants / workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=21)
    parser.add_argument("--out", default="bench/out/study")
    args = parser.parse_args()
    out = Path(args.out)
    if is_simulated_study(out):  # an earlier benchmark's study: gone before the clock starts
        shutil.rmtree(out)
    start = time.perf_counter()
    simulate_study(out, participants=args.participants, progress=True)  # refuses other folders
    seconds = time.perf_counter() - start
    size = folder_size(out)
    workers = min(os.cpu_count() or 1, 2)
    scratch = Path(tempfile.mkdtemp(prefix=".floor-", dir=out.parent))  # new: ours to delete
    try:
        floor = write_floor(out, args.participants, workers, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"simulate {args.participants} participants at 4 mm: {seconds:.1f} s wall "
        f"(target < 60 s), {size / 1e9:.2f} GB on disk (target < 1 GB)"
    )
    print(
        f"baseline (compress + write the same runs, {workers} workers): {floor:.1f} s; "
        f"ratio simulate/baseline = {seconds / floor:.2f}"
    )
    return 0 if seconds < 60 and size < 1e9 else 1


if __name__ == "__main__":
    sys.exit(main())
