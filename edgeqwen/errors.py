"""The one exception type the CLI turns into a one-line message."""


class EdgeQwenError(Exception):
    """A problem with the user's input: a file, a tensor, a config value or a request.

    The message names the thing and the problem on one line; the CLI prints it without a
    traceback (unless ``--debug``) and exits non-zero.
    """
