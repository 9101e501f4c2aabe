"""The one exception type that reaches the user as a one-line message."""


class UserError(Exception):
    """Bad input or an impossible setting: the message says what is wrong and what to do.

    Drivers print ``error: <message>`` on stderr and exit with code 2, without a traceback
    (``--debug`` shows it).
    """
