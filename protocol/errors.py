"""The few error types of the protocol layer.

A `ProtocolError` always means "this input was bad"; it is never a bug of
ours. Shells catch it at the edge, answer or log it, and go on.
"""


class ProtocolError(Exception):
    """Bad input from a peer: a client line or an envelope."""


class CommandError(ProtocolError):
    """A client line that is not a valid command; the text is the reply.

    `code` (a `protocol.replies.ReplyCode` value) and `details` say which
    error it is, for dialects that render errors natively."""

    def __init__(self, text: str, code: str = "", details: tuple[str, ...] = ()) -> None:
        super().__init__(text)
        self.code = code
        self.details = details


class DecodeError(ProtocolError):
    """An envelope between processes that does not decode."""
