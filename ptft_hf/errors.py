"""User-facing errors: each problem names the field, what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run's inputs, phrased for the person who typed the command."""

    field: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.what}; {self.fix}"


class UserError(Exception):
    """An error caused by the user's config or data, reported without a traceback.

    Carries one or more problems so that validation can report everything at once.
    """

    def __init__(self, problems: Problem | list[Problem]):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def of(cls, field: str, what: str, fix: str) -> "UserError":
        return cls(Problem(field, what, fix))


def report_problems(prog: str, err: UserError) -> int:
    """A command's refusal: one `PROG: error: field: what; fix` line per problem on stderr, no
    traceback; returns the exit status (2)."""
    import sys

    for problem in err.problems:
        sys.stderr.write(f"{prog}: error: {problem}\n")
    return 2
