"""Retry store I/O through transient faults (exponential backoff with jitter); name what cannot be retried.

A dump or a training run talks to its store for hours; an object store that drops connections or answers 5xx for
a minute must not cost that work. :func:`retry_call` reruns one idempotent store operation (a unit's chunk write,
its marker, the finalize write, a chunk read) while the failure looks transient, sleeping 0.5 s, 1 s, 2 s ... (capped
at 15 s, each with +-50 % jitter) and logging one line per retry to stderr. It gives up ``DDK_RETRY_SECONDS``
(default 120) after the first failure with :class:`StoreUnreachableError`, whose message tells the user to rerun the
same command: every writer and reader operation is resumable, so nothing is lost.

What counts as transient was measured against a real SeaweedFS server through s3fs/aiobotocore (see
tests/reliability/test_s3_outage.py): a stopped server gives ``botocore.exceptions.EndpointConnectionError`` (after
botocore's own few retries), caused by ``aiohttp.ClientConnectorError`` and ``ConnectionRefusedError``; a server that
dies mid-request gives ``ServerDisconnectedError``/``ConnectionClosedError``/read timeouts; a busy or restarting one
answers 500/503 (s3fs turns those into ``OSError(EREMOTEIO/EBUSY)`` caused by a botocore ``ClientError``). Missing
keys, permission and credential errors, bad requests, and every local-disk error are never retried: retrying cannot
fix them. A full disk (ENOSPC/EDQUOT) becomes :class:`StoreNoSpaceError`, and a refusal (S3 403 / wrong credentials,
which s3fs raises as ``PermissionError``; a local permission error) or missing credentials (botocore's
``NoCredentialsError``, raised before any request is sent) :class:`StoreAccessError`, at once, each with the fix in
its message. So every command that opens a store fails the same way, on one line, for each of these causes.

Classes are matched by name, so this module imports neither botocore nor aiohttp (they are optional extras).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import DdkError, StoreAccessError, StoreIOError, StoreNoSpaceError, StoreUnreachableError, describe

T = TypeVar("T")

#: Environment variable: seconds of retrying (from the first failure of one operation) before giving up.
RETRY_SECONDS_ENV = "DDK_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 120.0
#: First backoff delay and its cap, in seconds (each delay is drawn in [d/2, 3d/2]).
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 15.0

#: Exception class names (anywhere in the MRO) that mean "the connection or the server failed, try again".
_TRANSIENT_NAMES = frozenset({
    # botocore (all subclasses of botocore.exceptions.ConnectionError / HTTPClientError)
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "HTTPClientError", "ProxyConnectionError", "ResponseStreamingError", "IncompleteReadError",
    # aiohttp
    "ClientConnectionError", "ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError",
    "ClientConnectorError", "ClientOSError",
    # http.client / fsspec / urllib3
    "IncompleteRead", "RemoteDisconnected", "FSTimeoutError", "ProtocolError", "NewConnectionError",
})
#: S3 error codes that a retry can outlive (throttling, server trouble).
_TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "ThrottlingException",
    "TooManyRequests", "RequestLimitExceeded", "500", "502", "503", "504",
})
#: Local errors that no retry fixes, even when raised by a class that also looks like a connection error.
_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
#: S3 error codes that mean "these credentials may not do this" (s3fs raises most of them as PermissionError).
_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                           "InvalidToken", "AllAccessDisabled", "403"})
#: botocore exceptions (class names) meaning "no usable credentials were found": no request was even sent.
_NO_CREDENTIALS_NAMES = frozenset({"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                                   "NoAuthTokenError"})
#: How to give an object store credentials, in every message that asks for them.
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass --storage-option key=... "
                    "--storage-option secret=...")


def retry_budget_s() -> float:
    """Seconds to keep retrying one operation: ``DDK_RETRY_SECONDS`` if set to a number >= 0, else 120."""
    raw = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise DdkError(f"{RETRY_SECONDS_ENV}={raw!r} is not a number of seconds; set it to e.g. 120 or unset it"
                       ) from None
    if not value >= 0:
        raise DdkError(f"{RETRY_SECONDS_ENV}={raw!r} must be >= 0 seconds")
    return value


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts, outermost first (cycles and very deep chains cut off)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 16 and all(cur is not e for e in out):
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _s3_answer(exc: BaseException) -> tuple[str, int | None] | None:
    """(error code, HTTP status) of a botocore ClientError; None for any other exception."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict) or not isinstance(response.get("Error"), dict):
        return None
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return str(response["Error"].get("Code", "")), status if isinstance(status, int) else None


def _client_error_transient(exc: BaseException) -> bool | None:
    """For a botocore ClientError: True for 5xx/429/throttling, False for other answers; None if not one."""
    answer = _s3_answer(exc)
    if answer is None:
        return None
    code, status = answer
    return code in _TRANSIENT_CODES or (status is not None and (status >= 500 or status == 429))


def _client_refusal(exc: BaseException) -> int | None:
    """The HTTP status of an object store's 4xx answer other than "not found" (a missing key is an ordinary
    answer that callers handle) behind ``exc``: a malformed request, a bad bucket name."""
    if isinstance(exc, FileNotFoundError):
        return None
    for e in _chain(exc):
        answer = _s3_answer(e)
        if answer is not None and answer[1] is not None and 400 <= answer[1] < 500 and answer[1] != 404:
            return answer[1]
    return None


def is_no_space(exc: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno in _NO_SPACE for e in _chain(exc))


def is_access_denied(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) is a permission refusal: PermissionError, or an S3 403-type answer."""
    for e in _chain(exc):
        if isinstance(e, PermissionError):
            return True
        answer = _s3_answer(e)
        if answer is not None and (answer[0] in _DENIED_CODES or answer[1] == 403):
            return True
    return False


def is_missing_credentials(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) says that no credentials were found for an object store."""
    return any(any(cls.__name__ in _NO_CREDENTIALS_NAMES for cls in type(e).__mro__)
               or "Unable to locate credentials" in str(e) for e in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) is a connection, timeout or server-side (5xx, throttling) failure."""
    for e in _chain(exc):
        if isinstance(e, DdkError) or isinstance(e, _PERMANENT):
            return False
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return False
        verdict = _client_error_transient(e)
        if verdict is not None:
            return verdict
        if isinstance(e, (ConnectionError, TimeoutError)):  # refused, reset, broken pipe, socket timeouts
            return True
        for cls in type(e).__mro__:
            if cls.__name__ in _TRANSIENT_NAMES:
                return True
            if cls.__name__ == "ConnectionError" and cls.__module__.startswith("botocore"):
                return True
    return False


def _store_kind(url: str) -> str:
    return "store" if "://" not in url or url.startswith("file://") else "object store"


def retry_call(fn: Callable[[], T], *, what: str, url: str, budget_s: float | None = None,
               log: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn()`` (an idempotent store operation) until it succeeds, a permanent error occurs, or time runs out.

    Args:
        fn: the operation; it is called again from scratch after a transient failure.
        what: what the operation does, for messages (e.g. "writing python/train unit 3 topk_ids").
        url: the store, for messages.
        budget_s: seconds of retrying after the first failure (default: ``DDK_RETRY_SECONDS``, else 120).
        log: where the one-line retry notices go (default: stderr).
        sleep: the sleep function (tests of the backoff pass their own).

    Raises:
        StoreUnreachableError: transient failures lasted longer than the budget.
        StoreNoSpaceError: the filesystem is full.
        StoreAccessError: the store refused the operation (S3 403, wrong credentials, local permissions).
        Exception: any other (permanent) error of ``fn``, unchanged.
    """
    budget = retry_budget_s() if budget_s is None else budget_s
    rng = random.Random()  # private: never disturb a seeded global generator (training determinism)
    first_failure: float | None = None
    attempt = 0
    while True:
        try:
            return fn()
        except DdkError:
            raise  # already a user-facing error (possibly from a nested retry_call)
        except Exception as e:
            if is_no_space(e):
                err = StoreNoSpaceError(f"no space left on device writing {url} ({what}); free space on that "
                                        f"filesystem (or enlarge it), then rerun the same command to resume")
                err.errno = errno.ENOSPC
                raise err from None
            if is_missing_credentials(e):
                raise StoreAccessError(f"no credentials for the object store: {what} at {url} ({describe(e, 120)}); "
                                       f"{CREDENTIALS_HINT}") from None
            if is_access_denied(e):
                remote = _store_kind(url) == "object store"
                fix = (f"check the credentials ({CREDENTIALS_HINT}) and that they may read and write this bucket "
                       "and prefix" if remote else "check the permissions of the store directory and its files")
                raise StoreAccessError(f"access denied: {what} at {url} ({describe(e, 120)}); {fix}") from None
            if not is_transient(e):
                if (status := _client_refusal(e)) is not None:
                    raise StoreIOError(f"the object store refused {what} at {url} with HTTP {status} "
                                       f"({describe(e, 120)}); check the URL's bucket and prefix and the endpoint",
                                       "fix that, then rerun the same command") from None
                raise
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            waited = now - first_failure
            if waited >= budget:
                kind = _store_kind(url)
                raise StoreUnreachableError(
                    f"{kind} unreachable: {what} at {url} kept failing for {waited:.0f} s after {attempt} "
                    f"retr{'y' if attempt == 1 else 'ies'} (last: {describe(e)}; retry budget "
                    f"{RETRY_SECONDS_ENV}={budget:g})") from None
            attempt += 1
            delay = min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.5)
            delay = min(delay, max(0.0, budget - waited))  # the last attempt comes when the budget runs out
            (log or _stderr)(f"ddk: {what} at {url} failed ({describe(e, 120)}); {_store_kind(url)} unreachable? "
                             f"retry {attempt} in {delay:.1f} s (giving up {budget:g} s after the first failure, "
                             f"{RETRY_SECONDS_ENV})")
            sleep(delay)


class _OrphanedTransientFilter(logging.Filter):
    """Drop asyncio's "exception was never retrieved" report when the exception is a transient connection failure.

    When the object store goes away mid-request, aiohttp's own background task that streams a request body
    (``ClientRequest.write_bytes``) can die with ``ClientConnectionResetError`` after the request it served has
    already failed; nothing awaits that task, so asyncio logs its traceback when it is collected. The failure itself
    reaches :func:`retry_call` through the request, which reports it on one line; the orphan's traceback is noise
    that buries that line. Any other unretrieved exception is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        orphaned = "exception was never retrieved" in str(record.msg)
        return not (orphaned and exc is not None and is_transient(exc))


_ORPHAN_FILTER = _OrphanedTransientFilter()
_ORPHAN_LOCK = threading.Lock()


def quiet_orphaned_transient_errors() -> None:
    """Install :class:`_OrphanedTransientFilter` on the ``asyncio`` logger (idempotent; object-store opens call it)."""
    with _ORPHAN_LOCK:
        log = logging.getLogger("asyncio")
        if _ORPHAN_FILTER not in log.filters:
            log.addFilter(_ORPHAN_FILTER)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


__all__ = ["StoreUnreachableError", "StoreNoSpaceError", "StoreAccessError", "retry_call", "retry_budget_s",
           "is_transient", "quiet_orphaned_transient_errors", "is_no_space", "is_access_denied", "is_missing_credentials", "CREDENTIALS_HINT",
           "RETRY_SECONDS_ENV", "DEFAULT_RETRY_SECONDS"]
