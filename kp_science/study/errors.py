"""The one error a problem with a study file raises: :class:`StudyDataError`."""

from __future__ import annotations

import os


class StudyDataError(ValueError):
    """A file in the study folder is missing, unreadable or inconsistent.

    ``str(err)`` is ``"<path>: <problem>"``; ``err.path`` and ``err.problem`` hold the parts.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep picklable despite the two-argument constructor
        return (type(self), (self.path, self.problem))
