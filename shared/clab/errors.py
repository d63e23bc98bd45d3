"""The one exception type that means "the user asked for something wrong".

The CLI turns it into a single line on stderr and exit status 2; anything else
is a bug in clab and keeps its traceback.
"""


class ClabError(Exception):
    """A user's mistake: a bad spec, a missing input, a value out of range."""


EXIT_USER_ERROR = 2
