"""``sub-*`` entries that discovery must skip without stopping: a symbolic link loop, a link to a
participant folder outside the study, a folder that cannot be read."""

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

#: entry name -> a phrase its skip reason must contain
BAD_ENTRIES = {
    "sub-locked": "cannot be read: permission denied",
    "sub-loop": "symbolic link loop",
    "sub-out": "outside the study folder",
}


@contextlib.contextmanager
def bad_entries(study: Path, outside: Path) -> Iterator[dict[str, str]]:
    """Add :data:`BAD_ENTRIES` to ``study`` (``sub-out`` links to a copy of sub-01 in
    ``outside``, ``sub-locked`` is a copy of sub-01 with mode 000); yields them.

    Root reads a folder with mode 000 anyway, so as root, listing ``sub-locked`` raises the
    PermissionError everyone else gets (``os.scandir`` is patched for that one path while the
    context is open). Its mode is restored at exit so the folder can be cleaned up.
    """
    (study / "sub-loop").symlink_to("sub-loop")
    shutil.copytree(study / "sub-01", outside / "sub-01")
    (study / "sub-out").symlink_to(outside / "sub-01", target_is_directory=True)
    locked = study / "sub-locked"
    shutil.copytree(study / "sub-01", locked)
    locked.chmod(0)
    real_scandir = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and Path(os.fsdecode(path)) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_scandir(path)

    try:
        with pytest.MonkeyPatch.context() as patch:
            if os.geteuid() == 0:
                patch.setattr(os, "scandir", scandir)
            yield dict(BAD_ENTRIES)
    finally:
        locked.chmod(0o755)
