"""The one exception type users see: a one-line message naming what is wrong with their input."""


class CytoError(Exception):
    """Bad input or an impossible request. Entry points print it as one line and exit 2."""
