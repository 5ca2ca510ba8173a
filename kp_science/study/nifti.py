"""NIfTI-1 images read forward once, block by block of volumes, the file hashed as it is read.

A BOLD run is never held whole: :func:`open_nifti` reads the header and hands out the voxel
data a block of volumes at a time into one reused buffer (NIfTI stores x fastest, then y, z,
t, so each volume is contiguous), decompressing ``.nii.gz`` with ISA-L's gzip reader straight
into that buffer. The file is read and its sha256 computed on a worker thread a chunk ahead
of the decompression (hashlib and ISA-L release the GIL), so hashing overlaps decompression
on a second core. Reading to the end checks every gzip member's CRC and length, so a truncated
or corrupt file raises :class:`StudyDataError` naming it even when the damage is after the
last voxel. :func:`read_nifti` reads a small image (a brain mask, an atlas) whole.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import nibabel as nib
import numpy as np
from isal import isal_zlib
from nibabel.spatialimages import HeaderDataError

from kp_science.study.errors import StudyDataError
from kp_science.study.reading import require_file, unreadable_error

# isal's stubs declare ``isal_zlib.error`` as an exception instance; it is the class IsalError
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)
# ISA-L's gzip reader (C, GIL released while inflating): decompresses into the caller's buffer,
# reads every member, checks each CRC and length; isal.igzip reads with it too
_GzipReader = isal_zlib._GzipReader  # noqa: SLF001  (no public readinto-into-buffer reader)

# compressed bytes read per call: ISA-L's own default (isal.igzip.READ_BUFFER_SIZE)
READ_BYTES = 512 * 1024
# decompressed bytes per block of volumes: one volume of a 2 mm run (4.3 MB), 15 at 4 mm;
# small against a run (< 0.01×) and partly cache-resident, large enough that the per-block
# Python overhead is negligible
BLOCK_BYTES = 8 * 1024 * 1024


class _Readable(Protocol):
    """What reading needs of a file or decompressor: forward reads and the position."""

    def read(self, size: int, /) -> bytes: ...

    def readinto(self, buffer: Any, /) -> int | None: ...

    def tell(self) -> int: ...


class _HashedFile(io.RawIOBase):
    """The file read forward in chunks of ``READ_BYTES`` by one worker thread, which hashes
    each chunk as it reads it (sha256) while the caller decompresses the previous one; the
    caller's ``readinto`` takes the bytes read ahead."""

    def __init__(self, raw: io.RawIOBase):
        self._raw = raw
        self._digest = hashlib.sha256()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="kp-sha256")
        self._ahead: Future[bytes] | None = None
        self._chunk = memoryview(b"")
        self._position = 0
        self._eof = False

    def _read_and_hash(self) -> bytes:
        chunk = self._raw.read(READ_BYTES) or b""
        self._digest.update(chunk)  # releases the GIL for all but tiny chunks
        return chunk

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        if not self._chunk and not self._eof:
            ahead = self._ahead or self._worker.submit(self._read_and_hash)
            chunk = ahead.result()  # an OSError of the read is raised here
            self._eof = not chunk
            # the next chunk is read and hashed while the caller works on this one
            self._ahead = None if self._eof else self._worker.submit(self._read_and_hash)
            self._chunk = memoryview(chunk)
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._chunk))
        view[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        self._position += n
        return n

    def hexdigest(self) -> str:
        """sha256 of the bytes read so far (all of them once ``readinto`` returned 0)."""
        if self._ahead is not None:
            self._ahead.result()
        return self._digest.hexdigest()

    def close(self) -> None:
        self._worker.shutdown(wait=True)  # a read ahead finishes before the file closes
        super().close()


@dataclass(frozen=True)
class NiftiHeader:
    """What the header of a NIfTI-1 image says.

    ``shape``: the data shape (x, y, z[, t, …]); ``dtype``: the on-disk dtype, byte order
    included (physical values are ``raw * slope + inter``); ``affine`` 4 × 4 (voxel → mm);
    ``zooms_mm``: voxel sizes in mm (three; fewer for an image of fewer dimensions);
    ``tr_s``: the header TR in seconds (None below 4 dimensions).
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    slope: float
    inter: float
    affine: np.ndarray
    zooms_mm: tuple[float, ...]
    tr_s: float | None

    @property
    def voxels_per_volume(self) -> int:
        """Voxels of one volume (x·y·z)."""
        return int(np.prod(self.shape[:3]))

    @property
    def n_volumes(self) -> int:
        """Volumes (the product of the dimensions after the third; 1 for a 3-D image)."""
        return int(np.prod(self.shape[3:]))


_SPACE_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
# An unset time unit is read as seconds: that is what fMRIPrep and most writers mean.
_TIME_TO_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


def _header_of(path: Path, header: nib.Nifti1Header) -> NiftiHeader:
    shape = tuple(int(n) for n in header.get_data_shape())
    slope, inter = header.get_slope_inter()
    space_unit, time_unit = map(str, header.get_xyzt_units())
    zooms = tuple(header.get_zooms())
    to_mm = _SPACE_TO_MM.get(space_unit, 1.0)
    return NiftiHeader(
        path=path,
        shape=shape,
        dtype=header.get_data_dtype(),
        slope=1.0 if slope is None else float(slope),
        inter=0.0 if inter is None else float(inter),
        # a 4 × 4 array (nibabel's unannotated code lets pyright infer a tuple too)
        affine=cast(np.ndarray, header.get_best_affine()),
        zooms_mm=tuple(float(z) * to_mm for z in zooms[:3]),
        tr_s=float(zooms[3]) * _TIME_TO_S.get(time_unit, 1.0) if len(shape) >= 4 else None,
    )


@contextmanager
def _as_study_error(path: Path) -> Iterator[None]:
    """Library errors of reading ``path`` as :class:`StudyDataError` naming it."""
    try:
        yield
    except StudyDataError:
        raise
    except OSError as e:
        if e.errno is not None:  # the operating system refused (permission, I/O error):
            raise unreadable_error(path, "image", e) from e  # the file itself may be intact
        # gzip.BadGzipFile (bad magic, CRC or length) is an OSError without errno
        raise StudyDataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
    except (EOFError, zlib.error, _ISAL_ERROR, ValueError, HeaderDataError) as e:
        raise StudyDataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e


class NiftiStream:
    """An open NIfTI-1 file (``.nii`` or ``.nii.gz``, single file), read forward once.

    ``header`` is read on opening. :meth:`volume_blocks` hands out the voxel data, then reads
    on to the end of the file (gzip CRC and length of every member checked); ``sha256`` is
    the hex digest of the file's bytes once that is done. Use as a context manager
    (:func:`open_nifti`). Every reading problem raises :class:`StudyDataError` naming the file.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        require_file(self.path, "image")
        self._sha256: str | None = None
        self._started = False
        with _as_study_error(self.path):
            self._raw = open(self.path, "rb", buffering=0)  # noqa: SIM115  (closed in close())
            try:
                self._hashed = _HashedFile(self._raw)
                gzipped = self.path.name.endswith(".gz")
                self._stream: _Readable = (
                    _GzipReader(cast(Any, self._hashed), READ_BYTES)
                    if gzipped
                    else io.BufferedReader(self._hashed, READ_BYTES)
                )
                header = nib.Nifti1Header.from_fileobj(self._stream, check=False)
                if header["magic"].item() != b"n+1":  # single-file NIfTI-1 (no .hdr/.img)
                    raise StudyDataError(self.path, "not a single-file NIfTI-1 image (bad magic)")
                self.header = _header_of(self.path, header)
                _skip(self._stream, int(header.get_data_offset()) - self._stream.tell())
            except BaseException:
                self.close()
                raise

    def __enter__(self) -> NiftiStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the hashing thread and close the file (safe to call more than once)."""
        for part in ("_hashed", "_raw"):
            if hasattr(self, part):
                getattr(self, part).close()

    @property
    def sha256(self) -> str:
        """sha256 (hex) of the file's bytes; known once the data has been read to the end."""
        if self._sha256 is None:
            raise RuntimeError(f"{self.path}: sha256 is known only after reading to the end")
        return self._sha256

    def volume_blocks(self, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """The voxel data, ``(first volume, block)`` for consecutive blocks of volumes.

        ``block``: read-only array (volumes in the block, voxels per volume) of the on-disk
        dtype and byte order (voxels in NIfTI order, x fastest), as many volumes as fit in
        ``block_bytes`` (at least one); the last block may be shorter. One buffer is reused:
        a block is valid only until the next is requested. After the last block the file is
        read to its end (trailers checked, hash completed), then the iteration stops.
        """
        if self._started:
            raise RuntimeError(f"{self.path}: the voxel data can be read once")
        self._started = True
        header = self.header
        per_volume = header.voxels_per_volume * header.dtype.itemsize
        n_volumes = header.n_volumes if per_volume else 0
        per_block = max(1, block_bytes // per_volume) if per_volume else 0
        buffer = np.empty((min(per_block, n_volumes), header.voxels_per_volume), header.dtype)
        with _as_study_error(self.path):
            for first in range(0, n_volumes, per_block):
                block = buffer[: min(per_block, n_volumes - first)]
                _fill(self._stream, block, first * per_volume, n_volumes * per_volume, self.path)
                view = block.view()
                view.flags.writeable = False
                yield first, view
            self._finish()

    def read_all(self) -> np.ndarray:
        """All the voxel data as one array of shape ``header.shape`` (Fortran order, native
        byte order): for small images only (masks, atlases, tests)."""
        if self._started:
            raise RuntimeError(f"{self.path}: the voxel data can be read once")
        self._started = True
        header = self.header
        flat = np.empty(int(np.prod(header.shape)), header.dtype)
        with _as_study_error(self.path):
            _fill(self._stream, flat, 0, flat.nbytes, self.path)
            self._finish()
        if not header.dtype.isnative:
            flat = flat.astype(header.dtype.newbyteorder("="))
        return flat.reshape(header.shape, order="F")

    def _finish(self) -> None:
        # reading on to EOF makes the gzip reader check every member's CRC and length trailer
        # (and lets the hash see every byte); anything after the voxel data is discarded
        scratch = bytearray(READ_BYTES)
        while self._stream.readinto(scratch):
            pass
        self._sha256 = self._hashed.hexdigest()


def open_nifti(path: str | os.PathLike[str]) -> NiftiStream:
    """Open a NIfTI-1 image for one forward read (:class:`NiftiStream`): its header now, its
    voxel data block by block. Raises :class:`StudyDataError` naming the file."""
    return NiftiStream(path)


@dataclass
class NiftiData:
    """A NIfTI-1 image read completely into memory (a mask or an atlas: small images).

    ``data`` is the raw on-disk array (e.g. int16) in native byte order, shape ``shape``;
    physical values are ``data * slope + inter``. ``zooms_mm`` are voxel sizes in mm (three;
    fewer for an image of fewer dimensions), ``tr_s`` the header TR in seconds (None for
    images with fewer than 4 dimensions).
    """

    path: Path
    data: np.ndarray
    slope: float
    inter: float
    affine: np.ndarray
    zooms_mm: tuple[float, ...]
    tr_s: float | None
    sha256: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)


def read_nifti(path: str | os.PathLike[str]) -> NiftiData:
    """Read a NIfTI-1 ``.nii`` / ``.nii.gz`` whole in one pass: header, voxel data, sha256.

    For small images (masks, atlases): a BOLD run is read block by block instead
    (:func:`open_nifti`). Raises :class:`StudyDataError` naming the file.
    """
    with open_nifti(path) as stream:
        data = stream.read_all()
        header = stream.header
        return NiftiData(
            path=header.path,
            data=data,
            slope=header.slope,
            inter=header.inter,
            affine=header.affine,
            zooms_mm=header.zooms_mm,
            tr_s=header.tr_s,
            sha256=stream.sha256,
        )


def _skip(stream: _Readable, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, READ_BYTES))
        if not chunk:
            raise EOFError("file ends inside the header / extensions")
        n -= len(chunk)


def _fill(stream: _Readable, array: np.ndarray, done: int, total: int, path: Path) -> None:
    """Fill ``array`` (C-contiguous) from ``stream``; ``done`` of ``total`` data bytes were
    read before it (for the message of a file that ends early)."""
    view = array.reshape(-1).view(np.uint8).data
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            raise StudyDataError(
                path, f"truncated image: file ends after {done + got} of {total} data bytes"
            )
        got += n
