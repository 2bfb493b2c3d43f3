"""The one exception type users can cause; the CLI turns it into a one-line message and exit code 2."""


class WisparseError(Exception):
    """Bad input: a missing model, a bad plan, unusable text, an unwritable path. Message is one line."""
