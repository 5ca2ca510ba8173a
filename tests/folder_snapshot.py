"""The state of a folder, to show that kp left it as it was."""

import stat
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None, int]]:
    """Every path under ``root`` and ``root`` itself (a file or a folder): (mode — type and
    permissions —, the bytes of a regular file (None otherwise), mtime in ns)."""
    state = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        state[path.relative_to(root).as_posix()] = (st.st_mode, content, st.st_mtime_ns)
    return state
