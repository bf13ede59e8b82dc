"""One exception type for every user-facing failure.

The CLI prints ``FacelabError`` as a single line naming the culprit (a file, a key, an identity) instead of a
traceback: a user with a bad folder or a typo in a config needs the name of the thing to fix, not our stack.
"""


class FacelabError(Exception):
    """A problem with the user's input (data, config, checkpoint) that they can fix."""
