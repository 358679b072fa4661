"""One exception type for bad input: the CLI prints it as one line on stderr and exits with code 2."""


class CompressError(Exception):
    """A problem the user can fix. The message names the problem and the fix, in one line.

    Args:
        problem: what is wrong, e.g. "model 'x.pt' not found".
        fix: what to do about it, e.g. "pass an existing file or a hub id".
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)
