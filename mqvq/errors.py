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
