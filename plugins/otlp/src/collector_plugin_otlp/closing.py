"""The one exception both transports and the receiver share (its own module, so that
the transports need not import the receiver that starts them)."""


class Closing(Exception):
    """The receiver is shutting down: the client should retry (elsewhere or later)."""
