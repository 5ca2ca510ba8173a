"""NIfTI BOLD and mask reading in one pass, the bytes hashed as they are decompressed."""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from isal import isal_zlib
from nibabel.spatialimages import HeaderDataError

from kp_science.study.errors import StudyDataError
from kp_science.study.reading import CHUNK_BYTES, require_file, unreadable_error

# isal's stubs declare ``isal_zlib.error`` as an exception instance; it is the class IsalError
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)


class _HashingReader(io.RawIOBase):
    """A forward-only reader that hashes every byte it passes on."""

    def __init__(self, raw: io.BufferedReader):
        self._raw = raw
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return n or 0


class _GzipStream(io.RawIOBase):
    """Forward-only gzip decompression with ISA-L (same format and CRC/length checks as
    zlib, a few times faster), reading compressed chunks from ``raw`` as needed."""

    def __init__(self, raw: io.RawIOBase):
        self._raw = raw
        self._inflate = isal_zlib.decompressobj(31)  # 31: gzip header and trailer
        self._buffer = memoryview(b"")
        self._delivered = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._delivered

    def _refill(self) -> bool:
        # at most CHUNK_BYTES bytes per call: unbounded output would allocate fresh memory for
        # every expanded chunk (page faults dominate), and bounds memory for all-zero data
        while not self._buffer:
            if self._inflate.unconsumed_tail:
                data = self._inflate.unconsumed_tail
            elif self._inflate.eof:
                data = self._inflate.unused_data
                if not data:
                    return False
                self._inflate = isal_zlib.decompressobj(31)  # a further gzip member
            else:
                data = self._raw.read(CHUNK_BYTES)
                if not data:
                    raise EOFError("compressed file ended before the end-of-stream marker")
            self._buffer = memoryview(self._inflate.decompress(data, CHUNK_BYTES))
        return True

    def readinto(self, buffer) -> int:
        if not self._refill():
            return 0
        n = min(len(buffer), len(self._buffer))
        memoryview(buffer).cast("B")[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self._delivered += n
        return n


@dataclass
class NiftiData:
    """A NIfTI-1 image read completely into memory.

    ``data`` is the raw on-disk array (e.g. int16), shape ``shape``; physical values are
    ``data * slope + inter``. ``zooms_mm`` are voxel sizes in mm (three; fewer for an image
    of fewer dimensions), ``tr_s`` the header TR in seconds (None for images with fewer than
    4 dimensions).
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


_SPACE_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
# An unset time unit is read as seconds: that is what fMRIPrep and most writers mean.
_TIME_TO_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6, "unknown": 1.0}


def read_nifti(path: str | os.PathLike[str]) -> NiftiData:
    """Read a NIfTI-1 ``.nii`` / ``.nii.gz`` in one pass: header, all voxel data, sha256.

    The whole gzip stream is decompressed and its CRC checked, so a truncated or corrupt file is
    caught even when the damage is after the last voxel. Raises :class:`StudyDataError`.
    """
    path = Path(path)
    require_file(path, "image")
    try:
        with open(path, "rb") as raw:
            hashing = _HashingReader(raw)
            gz = path.name.endswith(".gz")
            stream = _GzipStream(hashing) if gz else io.BufferedReader(hashing)
            header = nib.Nifti1Header.from_fileobj(stream, check=False)
            if header["magic"].item() != b"n+1":  # single-file NIfTI-1 only (no .hdr/.img)
                raise StudyDataError(path, "not a single-file NIfTI-1 image (bad magic)")
            offset = int(header.get_data_offset())
            _skip(stream, offset - stream.tell())
            shape = tuple(int(n) for n in header.get_data_shape())
            dtype = header.get_data_dtype()
            flat = np.empty(int(np.prod(shape)), dtype=dtype)
            _fill(stream, flat.view(np.uint8), path)
            # Reading on to EOF makes gzip check the CRC and length trailer.
            while stream.read(CHUNK_BYTES):
                pass
            # bytes gzip did not need still belong to the file hash
            while hashing.read(CHUNK_BYTES):
                pass
    except StudyDataError:
        raise
    except OSError as e:
        if e.errno is not None:  # the operating system refused (permission, I/O error):
            raise unreadable_error(path, "image", e) from e  # the file itself may be intact
        raise StudyDataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
    except (EOFError, zlib.error, _ISAL_ERROR, ValueError, HeaderDataError) as e:
        raise StudyDataError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e

    if not dtype.isnative:
        flat = flat.astype(dtype.newbyteorder("="))
    slope, inter = header.get_slope_inter()
    space_unit, time_unit = map(str, header.get_xyzt_units())
    zooms = tuple(header.get_zooms())
    to_mm = _SPACE_TO_MM.get(space_unit, 1.0)
    tr = float(zooms[3]) * _TIME_TO_S.get(time_unit, 1.0) if len(shape) >= 4 else None
    return NiftiData(
        path=path,
        data=flat.reshape(shape, order="F"),
        slope=1.0 if slope is None else float(slope),
        inter=0.0 if inter is None else float(inter),
        # a 4 × 4 array (nibabel's unannotated code lets pyright infer a tuple too)
        affine=cast(np.ndarray, header.get_best_affine()),
        zooms_mm=tuple(float(z) * to_mm for z in zooms[:3]),
        tr_s=tr,
        sha256=hashing.digest.hexdigest(),
    )


def _skip(stream: io.RawIOBase | io.BufferedIOBase, n: int) -> None:
    while n > 0:
        chunk = stream.read(min(n, CHUNK_BYTES))
        if not chunk:
            raise EOFError("file ends inside the header / extensions")
        n -= len(chunk)


def _fill(stream: io.RawIOBase | io.BufferedIOBase, buffer: np.ndarray, path: Path) -> None:
    view = buffer.data
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            raise StudyDataError(
                path, f"truncated image: file ends after {got} of {len(view)} data bytes"
            )
        got += n
