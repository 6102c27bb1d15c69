"""The one exception type for problems a user can fix (bad input, bad params)."""

from __future__ import annotations

from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that a stage caught to say what it had already replaced (`run_stage` prints it)."""


class StageError(Exception):
    """A problem with a stage's input or parameters, reported as one line without a traceback.

    `where` names what is wrong (a file, a file and row, a params key); `problem` says what.
    """

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")

    def __reduce__(self) -> tuple:
        # Rebuilt from its fields (Exception pickles `args`, the joined message), so it crosses
        # from a worker process to the parent intact.
        return type(self), (self.where, self.problem)
