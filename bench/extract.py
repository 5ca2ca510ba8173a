"""Benchmark: streaming ROI extraction from one 2 mm MNI run (issue 19, item 3).

The run: 97×115×97 voxels × 300 volumes, float32, gzipped (as fMRIPrep writes it), with its
brain mask and confounds, simulated once into ``bench/out/extract`` (git-ignored). In one
process, best of 3 interleaved rounds after a warm-up round:

(a) the floor: ISA-L decompressing the same ``.nii.gz`` as a stream into a reused buffer,
    output discarded (its gzip reader, as ``isal.igzip`` reads; the faster of a 1 MiB buffer
    and one of ours' block size);
(b) ours: what ``roi_timeseries`` computes from the run's voxels — the brain mask read, the
    six ROIs on the run's grid, the run read once a block of volumes at a time as it
    decompresses (``open_nifti``: gzip CRC and length checked, sha256 of the file on a second
    thread) into every ROI's means and coverage (``stream_roi_means``);
(b') ours + the run's confounds (nilearn ``load_confounds`` strategy) + ``clean_roi_signals``;
(c) nibabel loading the whole array, ``np.asanyarray(load(p).dataobj)``;
(d) nilearn: ``NiftiLabelsMasker`` on a label image of the same voxels, with the same
    confounds and sample mask (compare with (b')).

Targets: (b)/(a) ≤ 1.1, and a peak memory increase of (b), measured in a fresh process,
≤ 0.15× the uncompressed run (97·115·97·300·4 bytes). Confounds are parsed afresh in every
timed call (``load_run_confounds`` memoises them). The machine may be shared: the load
average is printed before and after, and beside the wall times the CPU seconds of (a) and
(b), of the calling thread (the critical path when the hashing thread has a core of its own)
and of all threads, which a loaded machine barely changes.

    .venv/bin/python bench/extract.py [--out bench/out/extract] [--repeats 3]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from kp_resources.roi_set import RoiSet  # noqa: E402
from kp_science import roi_signals  # noqa: E402
from kp_science.cleaning import CleaningStrategy  # noqa: E402
from kp_science.roi_signals import (  # noqa: E402
    Extraction,
    clean_roi_signals,
    load_run_confounds,
    stream_roi_means,
)
from kp_science.study import nifti  # noqa: E402
from kp_science.study.nifti import open_nifti, read_nifti  # noqa: E402

SHAPE = (97, 115, 97)
VOLUMES = 300
RUN_BYTES = int(np.prod(SHAPE)) * VOLUMES * 4  # the uncompressed float32 voxel data
TARGET_TIME = 1.1
TARGET_MEMORY = 0.15


def load(path: Path) -> nib.Nifti1Image:
    """``nib.load`` typed as what it returns for a NIfTI-1 file."""
    return cast(nib.Nifti1Image, nib.load(path))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def bench_run(out: Path) -> tuple[Path, Path]:
    """(BOLD, brain mask) of the benchmark run, simulating it if absent. The simulator writes
    int16 with a scale factor; the run is rewritten as float32 (same affine and zooms), gzipped
    by nibabel at its default level, as fMRIPrep's outputs are."""
    func = out / "study" / "sub-01" / "ses-pre" / "func"
    stem = "sub-01_ses-pre_task-rest"
    bold = func / f"{stem}_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    mask = func / f"{stem}_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"
    done = out / "float32.done"
    if done.exists() and bold.exists():
        return bold, mask
    from kp_science.simulator import simulate_study

    out.mkdir(parents=True, exist_ok=True)
    print(f"simulating the benchmark run into {out} (once) ...", flush=True)
    # only the rest run is used; the task runs are kept at the simulator's minimum length.
    # overwrite replaces only a study kp simulated (a run interrupted before `done`)
    simulate_study(
        out / "study",
        participants=1,
        voxel_size=2.0,
        volumes={"faces": 16, "conflict": 16, "rest": VOLUMES},
        jobs=1,
        overwrite=True,
    )
    image = load(bold)
    data = np.asarray(image.dataobj, dtype=np.float32)  # applies the int16 scale factor
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    float_image = nib.Nifti1Image(data, image.affine, header)
    float_image.header.set_zooms(image.header.get_zooms())
    nib.save(float_image, bold)
    assert load(bold).shape == (*SHAPE, VOLUMES)
    done.touch()
    return bold, mask


# ---------------------------------------------------------------------------------------------
# The ways
# ---------------------------------------------------------------------------------------------


def isal_floor(bold: Path, buffer_bytes: int) -> int:
    """ISA-L decompressing ``bold`` as a stream into one reused buffer, output discarded
    (compressed bytes read as ours reads them); returns the bytes decompressed."""
    buffer = bytearray(buffer_bytes)
    total = 0
    with open(bold, "rb", buffering=0) as raw:
        reader = nifti._GzipReader(raw, nifti.READ_BYTES)  # noqa: SLF001
        while n := reader.readinto(buffer):
            total += n
    return total


def block_buffer_bytes() -> int:
    """The bytes of ours' blocks on the benchmark run: whole volumes within BLOCK_BYTES."""
    volume = int(np.prod(SHAPE)) * 4
    return max(1, nifti.BLOCK_BYTES // volume) * volume


def cold_confounds() -> None:
    """Forget memoised confounds, so every timed extraction parses its TSV as a first read of
    the run does."""
    cache = getattr(roi_signals, "_load_confounds_cached", None)
    if cache is not None:
        cache.cache_clear()


def extract_ours(bold: Path, mask: Path) -> tuple[Extraction, str, float]:
    """(ROI means and coverage, the run's sha256, its TR): the work ``roi_timeseries`` does
    on a run's voxels."""
    brain = read_nifti(mask).data
    with open_nifti(bold) as run:
        rois = RoiSet().voxels(run.header.affine, SHAPE)
        extraction = stream_roi_means(run, brain, rois)
        tr = run.header.tr_s
        assert tr is not None
        return extraction, run.sha256, tr


def extract_and_clean(bold: Path, mask: Path, strategy: CleaningStrategy):
    cold_confounds()
    extraction, _, tr = extract_ours(bold, mask)
    confounds, kept = load_run_confounds(bold, strategy)
    return clean_roi_signals(extraction.signals, confounds, kept, tr)


def load_nibabel(bold: Path) -> np.ndarray:
    return np.asanyarray(load(bold).dataobj)


def label_image(bold: Path, mask: Path) -> nib.Nifti1Image:
    """The six ROIs (in-brain voxels only, as ours uses) as a label image on the run's grid."""
    image = load(bold)
    brain = np.asarray(load(mask).dataobj).reshape(-1, order="F") != 0
    labels = np.zeros(int(np.prod(SHAPE)), np.int16)
    for i, roi in enumerate(RoiSet().voxels(np.asarray(image.affine), SHAPE)):
        labels[roi.flat[brain[roi.flat]]] = i + 1
    return nib.Nifti1Image(labels.reshape(SHAPE, order="F"), image.affine)


def extract_nilearn(
    bold: Path, labels: nib.Nifti1Image, strategy: CleaningStrategy, tr: float
) -> np.ndarray:
    from nilearn.maskers import NiftiLabelsMasker

    cold_confounds()
    confounds, kept = load_run_confounds(bold, strategy)
    masker = NiftiLabelsMasker(labels, standardize=None, detrend=False, t_r=tr)
    return masker.fit_transform(str(bold), confounds=confounds, sample_mask=kept)


def in_memory_means(bold: Path, mask: Path) -> np.ndarray:
    """The ROI means from nibabel's whole array, usable voxels only (the reference)."""
    data = load_nibabel(bold).reshape(-1, VOLUMES, order="F")
    in_brain = np.asarray(load(mask).dataobj).reshape(-1, order="F") != 0
    columns = []
    for roi in RoiSet().voxels(np.asarray(load(bold).affine), SHAPE):
        values = data[roi.flat[in_brain[roi.flat]]].astype(np.float64)
        finite = np.isfinite(values).all(axis=1)
        columns.append(values[finite][np.ptp(values[finite], axis=1) > 0].mean(axis=0))
    return np.stack(columns, axis=1)


def best_times(ways: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Best wall time, CPU time of the calling thread and CPU time of the whole process (all
    threads), in s, of each way over ``repeats`` rounds after a warm-up round (each minimum
    taken separately). The ways take turns within a round, so a change of machine load
    mid-benchmark hits all of them. CPU times barely move with the load of a shared machine:
    the calling thread's is the critical path when the hashing thread has a core to itself."""
    clocks = {"wall": time.perf_counter, "thread": time.thread_time, "process": time.process_time}
    times: dict[str, dict[str, list[float]]] = {
        name: {clock: [] for clock in clocks} for name in ways
    }
    for round_ in range(repeats + 1):
        for name, fn in ways.items():
            start = {clock: read() for clock, read in clocks.items()}
            fn()
            if round_:
                for clock, read in clocks.items():
                    times[name][clock].append(read() - start[clock])
    return {name: {clock: min(t) for clock, t in by.items()} for name, by in times.items()}


# ---------------------------------------------------------------------------------------------
# Peak memory, in a fresh process
# ---------------------------------------------------------------------------------------------


def peak_rss() -> int:
    """Peak resident memory of this process (bytes). Linux's VmHWM starts afresh at exec;
    ru_maxrss would carry over the parent's peak into a child started by fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child_peak(way: str, bold: Path, mask: Path) -> dict:
    """Run one way once in this (fresh) process; report the increase of peak RSS over the
    RSS after imports, and tracemalloc's peak (numpy and Python allocations), in bytes."""
    import tracemalloc

    from nilearn.interfaces.fmriprep import load_confounds  # noqa: F401  (imports not counted)
    from nilearn.signal import clean  # noqa: F401

    before = peak_rss()
    tracemalloc.start()
    if way == "nibabel":
        load_nibabel(bold)
    elif way == "ours":
        extract_ours(bold, mask)
    else:
        extract_and_clean(bold, mask, CleaningStrategy())
    _, traced = tracemalloc.get_traced_memory()
    return {"rss_increase": peak_rss() - before, "traced_peak": traced}


def measure_peak(way: str, bold: Path, mask: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", way, str(bold), str(mask)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(str(result.stdout).strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> int:
    parser = argparse.ArgumentParser(description=str(__doc__).splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "extract"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("WAY", "BOLD", "MASK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, bold, mask = args.child
        print(json.dumps(child_peak(way, Path(bold), Path(mask))))
        return 0

    bold, mask = bench_run(Path(args.out))
    print(
        f"run: {bold.name}, {SHAPE} × {VOLUMES} float32, {bold.stat().st_size / 1e6:.0f} MB "
        f"gzipped, {RUN_BYTES / 1e6:.0f} MB uncompressed; blocks of "
        f"{block_buffer_bytes() / 1e6:.1f} MB",
        flush=True,
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    # memory first, while this process is still small
    peaks = {way: measure_peak(way, bold, mask) for way in ("nibabel", "ours", "ours_clean")}

    strategy = CleaningStrategy()
    labels = label_image(bold, mask)
    extraction, sha, tr = extract_ours(bold, mask)
    assert sha == nifti.hashlib.sha256(bold.read_bytes()).hexdigest()
    reference = in_memory_means(bold, mask)
    same = np.array_equal(extraction.signals.to_numpy(), reference)
    print(f"ours vs nibabel's whole array averaged in memory: identical = {same}")
    # ours is in percent of each ROI's baseline, demeaned; nilearn averages float32 data in
    # float32, hence ~1e-5 rather than ~1e-12 as with int16 runs
    ours = extract_and_clean(bold, mask, strategy)
    theirs = extract_nilearn(bold, labels, strategy, tr)
    baseline = reference[ours.index.to_numpy()].mean(axis=0)
    expected = theirs - theirs.mean(axis=0)
    diff = np.abs(ours.to_numpy() * baseline / 100 - expected).max() / np.abs(expected).max()
    print(f"ours (cleaned) vs NiftiLabelsMasker: max relative difference {diff:.1e}", flush=True)
    del reference

    block = block_buffer_bytes()
    t = best_times(
        {
            "floor_1M": lambda: isal_floor(bold, 1 << 20),
            "floor_block": lambda: isal_floor(bold, block),
            "ours": lambda: extract_ours(bold, mask),
            "ours_clean": lambda: extract_and_clean(bold, mask, strategy),
            "nibabel": lambda: load_nibabel(bold),
            "nilearn": lambda: extract_nilearn(bold, labels, strategy, tr),
            "hash": lambda: nifti.hashlib.sha256(bold.read_bytes()).digest(),
        },
        args.repeats,
    )
    wall = {name: by["wall"] for name, by in t.items()}
    floor_way = min(("floor_1M", "floor_block"), key=lambda name: wall[name])
    floor = wall[floor_way]
    time_ratio = wall["ours"] / floor

    print(f"\nseconds (best of {args.repeats} interleaved rounds after a warm-up round)")
    print(f"  (a) ISA-L decompression, 1 MiB buffer   {wall['floor_1M']:6.2f}")
    print(f"      ISA-L decompression, block buffer   {wall['floor_block']:6.2f}")
    print(
        f"  (b) ours: ROI means + coverage + sha256 {wall['ours']:6.2f}   ours/floor = "
        f"{time_ratio:.2f} (target <= {TARGET_TIME}: {verdict(time_ratio <= TARGET_TIME)})"
    )
    print(
        f"  (b') ours + confounds + cleaning        {wall['ours_clean']:6.2f}   /floor = "
        f"{wall['ours_clean'] / floor:.2f}"
    )
    print(
        f"  (c) nibabel whole-array load            {wall['nibabel']:6.2f}   /floor = "
        f"{wall['nibabel'] / floor:.2f}"
    )
    print(
        f"  (d) nilearn NiftiLabelsMasker           {wall['nilearn']:6.2f}   nilearn/(b') = "
        f"{wall['nilearn'] / wall['ours_clean']:.2f}"
    )
    print(f"      sha256 of the gzipped file, serial  {wall['hash']:6.2f}   (overlapped in (b))")
    floor_cpu, ours_cpu = t[floor_way], t["ours"]
    print(
        "  CPU seconds, load-independent: calling thread (the critical path with a free core) "
        "/ all threads"
    )
    print(
        f"      (a) floor                           {floor_cpu['thread']:6.2f} / "
        f"{floor_cpu['process']:.2f}"
    )
    print(
        f"      (b) ours                            {ours_cpu['thread']:6.2f} / "
        f"{ours_cpu['process']:.2f}   calling thread ours/floor = "
        f"{ours_cpu['thread'] / floor_cpu['thread']:.2f}"
    )

    print(
        f"\npeak memory increase over the run's {RUN_BYTES / 1e6:.0f} MB "
        "(fresh process each; RSS = VmHWM, traced = tracemalloc)"
    )
    for way, peak in peaks.items():
        ratio = peak["rss_increase"] / RUN_BYTES
        target = (
            f"   (target <= {TARGET_MEMORY}×: {verdict(ratio <= TARGET_MEMORY)})"
            if way == "ours"
            else ""
        )
        print(
            f"  {way:11s} RSS +{peak['rss_increase'] / 1e6:6.0f} MB = {ratio:.3f}×   "
            f"traced {peak['traced_peak'] / 1e6:6.0f} MB = "
            f"{peak['traced_peak'] / RUN_BYTES:.3f}×{target}"
        )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    memory_ok = peaks["ours"]["rss_increase"] / RUN_BYTES <= TARGET_MEMORY
    return 0 if time_ratio <= TARGET_TIME and memory_ok and same else 1


if __name__ == "__main__":
    sys.exit(main())
