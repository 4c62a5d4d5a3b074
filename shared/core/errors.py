"""One error tree for the whole pipeline, split by what the caller must do.

::

    PipelineError
    ├── ConfigError                 stop at start-up, print the problems
    ├── TransientError              retry later; the work is fine
    │   ├── RateLimited             wait ``retry_after_s``, then retry the same work
    │   ├── UpstreamUnavailable     5xx, timeout, connection reset: back off and retry
    │   ├── PagingInterrupted       a MATI cursor expired: restart the window from the checkpoint
    │   ├── BusUnavailable          the bus cannot serve now: back off, leave the messages locked
    │   ├── LockLost                another receiver owns these messages now: do not act on them
    │   ├── StateUnavailable        Redis state cannot serve now: back off, readiness false
    │   └── NotReady                a readiness check says "not now": report 503, ask again later
    ├── PermanentError              this piece of work can never succeed: dead-letter it
    │   ├── MalformedResponse       a peer answered with a body we cannot read
    │   ├── QueryRejected           MATI refused the query itself (a 4xx that is not auth)
    │   ├── BatchRejected           Sentinel refused the whole request (400), naming the
    │   │                           records at fault when its body does (``records``)
    │   ├── MalformedMessage        a bus message is not the contract's shape (a poison message)
    │   └── OperatorRefused         an operator command cannot do what was asked: say why, exit 1
    └── FatalError                  stop taking work for this destination and alert
        ├── AuthenticationFailed    credentials refused even after a fresh token
        ├── DestinationNotFound     the workspace does not exist (404)
        ├── TlsVerificationFailed   the peer's certificate or TLS handshake was refused
        ├── SystemicRejection       Sentinel refuses every record for one reason no record owns
        ├── BusRefused              Redis refuses a bus operation a retry cannot fix
        ├── BusEntityMissing        a Service Bus entity is missing or disabled: create it
        ├── BusAccessDenied         Service Bus refuses the credentials or the role
        └── StateRefused            Redis refuses a state operation a retry cannot fix

Adapters translate third-party exceptions (aiohttp, redis, azure) into these classes at the
point where they meet them. Messages never carry a secret: adapters build them from status
codes and peer messages, never from request headers or URLs with credentials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """Raised when settings are invalid; ``problems`` holds one line per bad value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class TransientError(PipelineError):
    """Raised when the work may succeed if tried again later."""


class RateLimited(TransientError):
    """Raised when a peer answered 429; ``retry_after_s`` is how long it asked us to wait."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamUnavailable(TransientError):
    """Raised on 5xx answers, timeouts and connection resets after in-process retries ran out."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PagingInterrupted(TransientError):
    """Raised when MATI no longer honours a paging cursor (it lives about ten minutes)."""


class BusUnavailable(TransientError):
    """Raised when the bus cannot be reached or refuses an operation for now.

    The caller backs off and tries again; messages it holds stay locked until their lock runs
    out, then they are delivered again."""


class LockLost(TransientError):
    """Raised when settling messages whose lock expired; ``message_ids`` names them.

    The other holder owns them now: the caller must not act as if it settled them (no count,
    no commit for them); the rest of the batch was settled."""

    def __init__(self, message: str, *, message_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.message_ids = tuple(message_ids)


class StateUnavailable(TransientError):
    """Raised when Redis cannot be reached or cannot serve for now (connection refused or
    reset, timeout, loading, failover, out of memory): retry later, the work is fine.

    Refused credentials land here too: access keys and Entra tokens for Azure Cache for Redis
    rotate, and a service that backs off (readiness false) recovers once they are right again.
    """


class NotReady(TransientError):
    """Raised by a readiness check that ran fine but says "not now" (an open circuit).

    The probe answers 503 with the message; the kubelet asks again, nothing else is to do."""


class PermanentError(PipelineError):
    """Raised when this piece of work can never succeed as it is."""


class MalformedResponse(PermanentError):
    """Raised when a peer keeps answering with a body that is not the documented shape."""


class QueryRejected(PermanentError):
    """Raised when MATI refuses a query (a 4xx other than auth, rate limit or expired cursor)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RecordError:
    """One record Sentinel refused: its 0-based index in the request and Sentinel's messages."""

    index: int
    messages: tuple[str, ...]


class BatchRejected(PermanentError):
    """Raised when Sentinel refuses a whole upload request (HTTP 400).

    ``detail`` is Sentinel's own message (no status, no prefix of ours), what two refusals are
    compared by. ``records`` holds the records the answer named, each with its messages, when
    its body carried an ``errors[]`` list that names records of this request; empty when the
    answer does not say which record is at fault.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        detail: str = "",
        records: tuple[RecordError, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.records = records


class MalformedMessage(PermanentError):
    """Raised when a message body is not the contract's shape (a poison message).

    No retry can fix it: the caller dead-letters the message with this message as the reason."""


class OperatorRefused(PermanentError):
    """Raised when an operator command cannot do what it was asked (the indicator is unknown
    to MATI, not suppressed): the message is the whole answer, printed as one line."""


class FatalError(PipelineError):
    """Raised when a destination cannot be served until an operator acts."""


class AuthenticationFailed(FatalError):
    """Raised when a peer refuses our credentials even after a fresh token."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DestinationNotFound(FatalError):
    """Raised when Sentinel answers 404: usually a wrong workspace id."""


class SystemicRejection(FatalError):
    """Raised (by the uploader, which alone sees several answers) when Sentinel refuses every
    record for one shared reason: a setting such as the source system, a schema change on
    Sentinel's side. No record owns such a cause, so none is dead-lettered for it: the circuit
    opens with Sentinel's message and the batch is held until a probe is accepted."""


class TlsVerificationFailed(FatalError):
    """Raised when the TLS handshake with a peer fails verification (untrusted or expired
    certificate, wrong host name, no common protocol).

    Fatal, never retried: a certificate does not fix itself between attempts, and retrying
    hides what is usually a missing CA (``SSL_CERT_FILE``), a TLS-intercepting proxy or a wrong
    host — all things an operator must fix. Verification is never switched off instead.
    """


class BusRefused(FatalError):
    """Raised when Redis refuses a bus operation in a way a retry cannot fix (a key of ours
    holds a foreign type, an ACL denial, a script error): an operator must look."""


class BusEntityMissing(FatalError):
    """Raised when a queue, topic or subscription does not exist or is disabled: create it as
    docs/servicebus.md says; the services never create entities."""


class BusAccessDenied(FatalError):
    """Raised when Service Bus refuses the credentials or the role assignment: an operator
    grants the Data Sender / Data Receiver role or fixes the credentials."""


class StateRefused(FatalError):
    """Raised when Redis refuses an operation in a way a retry cannot fix (a key of ours holds
    a foreign type, a script error, an ACL denial): an operator must look."""
