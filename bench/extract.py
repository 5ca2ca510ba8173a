"""Benchmark: ROI extraction from one 2 mm MNI run (issue 3).

The run: 97×115×97 voxels × 300 volumes, float32, gzipped (as fMRIPrep writes it), with its
brain mask and confounds, simulated once into ``bench/out/extract`` (git-ignored). In one
process, best of 3 interleaved rounds after a warm-up round:

(a) baseline: nibabel loading the voxel data, ``np.asanyarray(nib.load(p).dataobj)`` — the
    gzip-decompression floor;
(b) ours: ``read_nifti`` (decompress, CRC and sha256) + all six ROIs' means + confounds
    (nilearn ``load_confounds``) + ``clean_roi_signals``;
(c) nilearn: ``NiftiLabelsMasker`` on a label image of the same voxels, with the same confounds
    and sample mask.

Targets: ours/nibabel ≤ 1.3 and a peak memory increase of (b), measured in a fresh process,
≤ 1.5× the uncompressed run (97·115·97·300·4 bytes). Also measures (b) with stdlib zlib in
place of ISA-L
(both patch ``kp_science.study.nifti`` in this process only), and where the time of (b) goes.
Confounds are parsed afresh in every timed call (``load_run_confounds`` memoises them).

    .venv/bin/python bench/extract.py [--out bench/out/extract] [--repeats 3]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from kp_resources.roi_set import RoiSet  # noqa: E402
from kp_science import roi_signals  # noqa: E402
from kp_science.cleaning import CleaningStrategy  # noqa: E402
from kp_science.roi_signals import (  # noqa: E402
    clean_roi_signals,
    extract_roi_means,
    load_run_confounds,
)
from kp_science.study import nifti as study_module  # noqa: E402
from kp_science.study.nifti import read_nifti  # noqa: E402

SHAPE = (97, 115, 97)
VOLUMES = 300
RUN_BYTES = int(np.prod(SHAPE)) * VOLUMES * 4  # the uncompressed float32 voxel data
TARGET_RATIO = 1.3
TARGET_MEMORY = 1.5


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
    image = nib.load(bold)
    data = np.asarray(image.dataobj, dtype=np.float32)  # applies the int16 scale factor
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    float_image = nib.Nifti1Image(data, image.affine, header)
    float_image.header.set_zooms(image.header.get_zooms())
    nib.save(float_image, bold)
    assert nib.load(bold).shape == (*SHAPE, VOLUMES)
    done.touch()
    return bold, mask


# ---------------------------------------------------------------------------------------------
# The three ways
# ---------------------------------------------------------------------------------------------


def load_nibabel(bold: Path) -> np.ndarray:
    return np.asanyarray(nib.load(bold).dataobj)


def cold_confounds() -> None:
    """Forget memoised confounds, so every timed extraction parses its TSV as a first read of
    the run does."""
    cache = getattr(roi_signals, "_load_confounds_cached", None)
    if cache is not None:
        cache.cache_clear()


def extract_ours(bold: Path, mask: Path, strategy: CleaningStrategy):
    cold_confounds()
    run = read_nifti(bold)
    brain = read_nifti(mask).data
    rois = RoiSet().voxels(run.affine, run.shape[:3])
    extraction = extract_roi_means(run.data, brain, rois, run.slope, run.inter)
    confounds, kept = load_run_confounds(bold, strategy)
    return clean_roi_signals(extraction.signals, confounds, kept, run.tr_s)


def label_image(bold: Path, mask: Path) -> nib.Nifti1Image:
    """The six ROIs (in-brain voxels only, as ours uses) as a label image on the run's grid."""
    image = nib.load(bold)
    brain = np.asarray(nib.load(mask).dataobj).reshape(-1, order="F") != 0
    labels = np.zeros(int(np.prod(SHAPE)), np.int16)
    for i, roi in enumerate(RoiSet().voxels(image.affine, SHAPE)):
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


@contextmanager
def stdlib_zlib():
    """``read_nifti`` decompressing with stdlib zlib instead of ISA-L (same API: a
    ``decompressobj(31)`` with ``eof``/``unused_data``), to see what ISA-L gives."""
    original = study_module.isal_zlib
    study_module.isal_zlib = zlib
    try:
        yield
    finally:
        study_module.isal_zlib = original


@contextmanager
def unchanged():
    yield


# how read_nifti decompresses, for (b) and its variants
VARIANTS = {"ours": unchanged, "ours_zlib": stdlib_zlib}


def best_times(ways: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time (s) of each way over ``repeats`` rounds after a warm-up round. The ways
    take turns within a round, so a change of machine load mid-benchmark hits all of them."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(repeats + 1):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


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
    else:
        with VARIANTS[way]():
            extract_ours(bold, mask, CleaningStrategy())
    _, traced = tracemalloc.get_traced_memory()
    return {"rss_increase": peak_rss() - before, "traced_peak": traced}


def measure_peak(way: str, bold: Path, mask: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", way, str(bold), str(mask)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        f"gzipped, {RUN_BYTES / 1e6:.0f} MB uncompressed",
        flush=True,
    )

    # memory first, while this process is still small
    peaks = {way: measure_peak(way, bold, mask) for way in ("nibabel", *VARIANTS)}

    strategy = CleaningStrategy()
    tr = float(nib.load(bold).header.get_zooms()[3])
    labels = label_image(bold, mask)
    # the answers agree (ours is in percent of each ROI's baseline, demeaned; nilearn averages
    # float32 data in float32, hence ~1e-5 rather than ~1e-12 as with int16 runs)
    ours = extract_ours(bold, mask, strategy)
    theirs = extract_nilearn(bold, labels, strategy, tr)
    raw = extract_roi_means(
        read_nifti(bold).data, read_nifti(mask).data, RoiSet().voxels(nib.load(bold).affine, SHAPE)
    ).signals.to_numpy()
    baseline = raw[ours.index.to_numpy()].mean(axis=0)
    expected = theirs - theirs.mean(axis=0)
    diff = np.abs(ours.to_numpy() * baseline / 100 - expected).max() / np.abs(expected).max()
    print(f"ours vs NiftiLabelsMasker: max relative difference {diff:.1e}", flush=True)

    def in_variant(name: str) -> Callable[[], object]:
        def run_it():
            with VARIANTS[name]():
                return extract_ours(bold, mask, strategy)

        return run_it

    run = read_nifti(bold)
    brain = read_nifti(mask).data
    from isal import igzip

    t = best_times(
        {
            "nibabel": lambda: load_nibabel(bold),
            **{name: in_variant(name) for name in VARIANTS},
            "nilearn": lambda: extract_nilearn(bold, labels, strategy, tr),
            "read": lambda: read_nifti(bold),
            "rest": lambda: (
                cold_confounds(),
                clean_roi_signals(
                    extract_roi_means(run.data, brain, RoiSet().voxels(run.affine, SHAPE)).signals,
                    *load_run_confounds(bold, strategy),
                    run.tr_s,
                ),
            ),
            "hash": lambda: study_module.hashlib.sha256(bold.read_bytes()).digest(),
            "isal_floor": lambda: igzip.decompress(bold.read_bytes()),
        },
        args.repeats,
    )

    print(f"\nseconds (best of {args.repeats} interleaved rounds after a warm-up round)")
    print(f"  (a) nibabel load                        {t['nibabel']:6.2f}")
    print(
        f"  (b) ours                                {t['ours']:6.2f}   ours/nibabel = "
        f"{t['ours'] / t['nibabel']:.2f} (target <= {TARGET_RATIO})"
    )
    print(
        f"  (c) nilearn NiftiLabelsMasker           {t['nilearn']:6.2f}   nilearn/ours = "
        f"{t['nilearn'] / t['ours']:.2f}"
    )
    print(
        f"  (b) with stdlib zlib, not ISA-L         {t['ours_zlib']:6.2f}   /nibabel = "
        f"{t['ours_zlib'] / t['nibabel']:.2f}; ISA-L saves "
        f"{t['ours_zlib'] - t['ours']:.2f} s ({t['ours_zlib'] / t['ours']:.2f}×)"
    )
    print("  breakdown of (b):")
    print(f"    read_nifti (gzip + CRC + sha256)      {t['read']:6.2f}")
    print(f"    sha256 of the gzipped file            {t['hash']:6.2f}")
    print(f"    ROIs + means + confounds + clean      {t['rest']:6.2f}")
    print(f"    ISA-L one-shot decompress (floor)     {t['isal_floor']:6.2f}")

    print(
        f"\npeak memory increase over the run's {RUN_BYTES / 1e6:.0f} MB "
        "(fresh process each; RSS = VmHWM, traced = tracemalloc)"
    )
    for way, peak in peaks.items():
        ratio = peak["rss_increase"] / RUN_BYTES
        print(
            f"  {way:14s} RSS +{peak['rss_increase'] / 1e6:6.0f} MB = {ratio:.2f}×   "
            f"traced {peak['traced_peak'] / 1e6:6.0f} MB = "
            f"{peak['traced_peak'] / RUN_BYTES:.2f}×"
            + (f"   (target <= {TARGET_MEMORY}×)" if way == "ours" else "")
        )
    memory_ok = peaks["ours"]["rss_increase"] / RUN_BYTES <= TARGET_MEMORY
    return 0 if t["ours"] / t["nibabel"] <= TARGET_RATIO and memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())
