"""Typed errors shared by every faas package.

Every error keeps structured fields and builds its one-line message from them,
so a person sees what went wrong and where, and code can match on the type.
An error that crosses the wire travels as :class:`protocol.messages.Error`
(``kind`` = the class name, ``message``, ``detail`` = remote traceback text)
and is rebuilt at the caller with :func:`from_wire`.
"""

from __future__ import annotations


class FaasError(Exception):
    """Base of every error faas raises on purpose."""

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        # Longer text that does not belong on the one-line message, such as a
        # traceback from a function process or a remote daemon.
        self.detail = detail

    def __str__(self) -> str:
        return self.message


# -- connection and framing ---------------------------------------------------


class ConnectionClosed(FaasError):
    """The peer closed the connection cleanly, between frames."""


class FrameTruncated(FaasError):
    """The connection ended in the middle of a frame."""


class PeerVanished(FaasError):
    """The peer stopped answering or the socket broke (reset, timeout)."""


class ObjectCorrupted(PeerVanished):
    """An object pulled from another host differs from what its sender hashed: it was
    corrupted in transit. Nothing was kept; like a lost transfer, its reader runs again."""


class ClosedByUs(FaasError):
    """An operation was attempted on a connection this side already closed."""


class FrameTooLarge(FaasError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class MalformedFrame(FaasError):
    """A frame that is not a valid message for this channel."""


class HandshakeFailed(FaasError):
    """Wrong protocol version, wrong role, or a bad cluster token proof."""


# -- user-facing failures -----------------------------------------------------


class ProjectError(FaasError):
    """The submitted project cannot be read or planned."""


class PlanInvalid(ProjectError):
    """The project was read but its plan has problems; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems in the project"
        super().__init__(head, detail="\n".join(problems))
        self.problems = problems

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return self.message + ":\n" + "\n".join(f"  - {p}" for p in self.problems)


class NotFound(FaasError):
    """A table, namespace, ref or run that does not exist."""


class NotAllowed(FaasError):
    """The user's role does not allow the request (scheduler/users.py)."""


class AlreadyExists(FaasError):
    """A table, namespace or ref that already exists."""


class InvalidInput(FaasError):
    """Input data or arguments that cannot be used (a CSV that does not parse, a bad filter)."""


class StorageError(FaasError):
    """The warehouse cannot be read or written: a missing bucket, refused credentials,
    an endpoint that does not answer. The message names the URI."""


class CommitConflict(FaasError):
    def __init__(self, branch: str, expected: str, found: str) -> None:
        super().__init__(
            f"commit conflict on branch {branch!r}: expected head {expected[:12]}, found {found[:12]}"
        )
        self.branch = branch
        self.expected = expected
        self.found = found


class MergeConflict(FaasError):
    def __init__(self, source: str, target: str, keys: list[str]) -> None:
        shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
        super().__init__(
            f"cannot merge {source!r} into {target!r}: both changed {shown}; nothing was written"
        )
        self.source = source
        self.target = target
        self.keys = keys


class FunctionFailed(FaasError):
    """User code raised, or its process died; ``detail`` holds the traceback or exit status."""


class EnvironmentFailed(FaasError):
    """A function's environment could not be built; ``detail`` has the installer's output."""


class TimedOut(FaasError):
    """A function ran past its timeout and was killed."""


class ExpectationFailed(FaasError):
    """An expectation returned False in a --strict run."""


class OutOfMemory(FaasError):
    def __init__(self, what: str, used: int, limit: int) -> None:
        from faas.protocol.sizes import format_size

        super().__init__(
            f"{what} used {format_size(used)}, over its limit of {format_size(limit)}, and was stopped"
        )
        self.used = used
        self.limit = limit


class RunCancelled(FaasError):
    """The run was cancelled before it finished."""


class NoWorkers(FaasError):
    """No worker is registered that could run the function."""


class RemoteError(FaasError):
    """A failure reported by a peer whose kind this side does not know."""


_SIMPLE_KINDS: dict[str, type[FaasError]] = {
    cls.__name__: cls
    for cls in (
        FaasError,
        NotAllowed,
        ConnectionClosed,
        FrameTruncated,
        PeerVanished,
        ObjectCorrupted,
        ClosedByUs,
        MalformedFrame,
        HandshakeFailed,
        ProjectError,
        NotFound,
        AlreadyExists,
        InvalidInput,
        StorageError,
        FunctionFailed,
        ExpectationFailed,
        EnvironmentFailed,
        TimedOut,
        RunCancelled,
        NoWorkers,
        RemoteError,
    )
}


def from_wire(kind: str, message: str, detail: str = "") -> FaasError:
    """Rebuild an error that came back over the wire, keeping its message and detail.

    Errors with structured constructors keep their type and the remote message;
    their fields are not carried over the wire.
    """
    if kind == "PlanInvalid":
        problems = detail.splitlines() or [message]
        return PlanInvalid(problems)
    structured: dict[str, type[FaasError]] = {
        "CommitConflict": CommitConflict, "FrameTooLarge": FrameTooLarge, "OutOfMemory": OutOfMemory,
        "MergeConflict": MergeConflict,
    }
    if kind in structured:
        # Keep the type so callers can catch it; the fields stay in the remote message.
        cls = structured[kind]
        err = cls.__new__(cls)
        FaasError.__init__(err, message, detail=detail)
        return err
    cls = _SIMPLE_KINDS.get(kind, RemoteError)
    return cls(message, detail=detail)
