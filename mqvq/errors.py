"""The one exception type for user mistakes.

Library code raises `UserError` with a single sentence naming what is wrong and what is
allowed; the CLI prints that sentence and exits non-zero without a traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad config, missing data or weights, bad CLI value."""
