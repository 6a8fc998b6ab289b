"""The exception type for user mistakes, and the one for a worker that lost its row.

Library code raises `UserError` with a single sentence naming what is wrong and what is
allowed; the CLI prints that sentence and exits non-zero without a traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad config, missing data or weights, bad CLI value."""


class LeaseLost(Exception):
    """This worker no longer holds the row it was running (it stalled past the lease timeout and
    another worker took the row over): it must stop at once and write nothing more, neither metrics
    nor checkpoints nor the run's end. Not a user mistake, and never recorded as the row's failure."""


def one_of(choices) -> str:
    """How an error sentence lists what is allowed: "a, b or c"."""
    choices = [str(c) for c in choices]
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"
