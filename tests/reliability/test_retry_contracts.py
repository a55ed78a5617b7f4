"""The retry policy's contracts (retry.py), with the exceptions botocore and aiohttp really raise and no server: what
is retried and what is raised at once, the budget ``DDK_RETRY_SECONDS``, the backoff's growth, cap and jitter, and
the errors that name the cause and its fix. The same policy against a live SeaweedFS server is in test_s3_outage.py.
"""

from __future__ import annotations

import errno
import random

import pytest
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from ddk_store.errors import DdkError, StoreAccessError, StoreNoSpaceError, StoreUnreachableError
from ddk_store.retry import DEFAULT_RETRY_SECONDS, RETRY_SECONDS_ENV, is_transient, retry_budget_s, retry_call


def client_error(code: str, status: int | None) -> ClientError:
    """A botocore ClientError as an S3 server's answer produces it (``status`` None: no HTTP metadata)."""
    response = {"Error": {"Code": code, "Message": code}}
    if status is not None:
        response["ResponseMetadata"] = {"HTTPStatusCode": status}
    return ClientError(response, "GetObject")


def raising(exc: BaseException):
    def fn():
        raise exc
    return fn


def wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised while handling ``inner`` (implicit chaining: ``__context__`` only, as library code does)."""
    try:
        try:
            raise inner
        except BaseException:
            raise outer
    except BaseException as e:
        return e


class Clock:
    """time.monotonic and sleep of one retry_call: sleeping advances the clock; the delays are recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now, self.delays = 1000.0, []
        monkeypatch.setattr("ddk_store.retry.time.monotonic", lambda: self.now)

    def sleep(self, d: float) -> None:
        self.delays.append(d)
        self.now += d


# ---------------------------------------------------------------------------------------------- the budget
def test_the_retry_budget_defaults_to_two_minutes_and_zero_means_no_retry(monkeypatch):
    monkeypatch.delenv(RETRY_SECONDS_ENV, raising=False)
    assert retry_budget_s() == DEFAULT_RETRY_SECONDS == 120.0
    monkeypatch.setenv(RETRY_SECONDS_ENV, " ")
    assert retry_budget_s() == 120.0
    monkeypatch.setenv(RETRY_SECONDS_ENV, "0")
    assert retry_budget_s() == 0.0
    for bad in ("-1", "nan"):
        monkeypatch.setenv(RETRY_SECONDS_ENV, bad)
        with pytest.raises(DdkError, match=rf"{RETRY_SECONDS_ENV}='{bad}' must be >= 0 seconds"):
            retry_budget_s()


def test_a_zero_budget_calls_the_operation_once_and_names_the_setting(monkeypatch):
    """DDK_RETRY_SECONDS=0 (what a test or a user who wants no waiting sets): one attempt, no retry line, and an
    error that names the variable to raise; a local or file:// store is a "store", never an "object store"."""
    calls, logs = [], []

    def down():
        calls.append(1)
        raise ConnectionResetError("connection reset by peer")

    for url in ("/data/store", "file:///data/store"):
        calls.clear()
        with pytest.raises(StoreUnreachableError) as info:
            retry_call(down, what="reading x", url=url, budget_s=0, log=logs.append, sleep=lambda d: None)
        msg = str(info.value)
        assert calls == [1] and logs == []
        assert msg.startswith(f"store unreachable: reading x at {url} kept failing for 0 s after 0 retries"), msg
        assert f"{RETRY_SECONDS_ENV}=0" in msg and "rerun the same command" in msg, msg


# ---------------------------------------------------------------------------------------------- the backoff
def test_backoff_doubles_from_half_a_second_is_capped_at_15_s_and_ends_with_the_budget(monkeypatch):
    clock = Clock(monkeypatch)
    logs = []
    with pytest.raises(StoreUnreachableError, match="kept failing for 150 s after"):
        retry_call(raising(ConnectionResetError("reset")), what="w", url="s3://b/p", budget_s=150,
                   sleep=clock.sleep, log=logs.append)
    delays = clock.delays
    assert len(logs) == len(delays) >= 10 and sum(delays) == pytest.approx(150)
    # each delay drawn in [d/2, 3d/2] around d = 0.5 s * 2**i, d capped at 15 s; the last one cut to the budget
    for i, d in enumerate(delays[:-1]):
        nominal = min(15.0, 0.5 * 2 ** i)
        assert nominal / 2 <= d <= nominal * 1.5, (i, delays)
    assert max(delays) <= 22.5 and all(d >= 7.5 for d in delays[6:-1]), delays


def test_retrying_never_disturbs_a_seeded_global_generator(monkeypatch):
    """Training seeds Python's global generator; the jitter of a retried read must not change what it draws."""
    clock = Clock(monkeypatch)
    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    with pytest.raises(StoreUnreachableError):
        retry_call(raising(ConnectionResetError("reset")), what="r", url="s3://b/p", budget_s=5, sleep=clock.sleep,
                   log=lambda m: None)
    assert len(clock.delays) >= 3
    assert [random.random() for _ in range(3)] == expected


# ------------------------------------------------------------------------------------- what is transient
@pytest.mark.parametrize("exc", [
    client_error("SlowDown", None), client_error("503", None),  # S3 codes that a retry outlives, without HTTP status
    client_error("BadGateway", 502), client_error("InternalErrorX", 500),  # any 5xx answer
    client_error("RequestThrottled", 429),  # throttled
    BotocoreConnectionError(error="connection pool closed"),  # botocore's own connection error base class
    TimeoutError("socket timed out"),
    wrapped(OSError("write failed"), ConnectionResetError("reset")),  # a library's error raised while handling one
], ids=["SlowDown", "code-503", "502", "500", "429", "botocore-ConnectionError", "TimeoutError", "context"])
def test_server_trouble_and_dropped_connections_are_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    wrapped(FileNotFoundError(2, "no such key"), ConnectionResetError("reset")),
    wrapped(PermissionError(13, "denied"), ConnectionResetError("reset")),
    wrapped(OSError(errno.ENOSPC, "No space left on device"), ConnectionResetError("reset")),
    client_error("NoSuchKey", 404), client_error("BadRequest", 400),
], ids=["missing-key", "permission", "no-space", "404", "400"])
def test_local_and_answered_errors_are_never_transient_whatever_caused_them(exc):
    """A missing key, a refusal or a full disk is final even when it was raised while handling a connection error
    (retrying cannot fix it)."""
    assert not is_transient(exc)


# ------------------------------------------------------------------------ errors raised at once, with the fix
@pytest.mark.skipif(not hasattr(errno, "EDQUOT"), reason="no EDQUOT on this platform")
def test_a_quota_is_a_full_disk_with_its_errno(monkeypatch):
    for code in (errno.ENOSPC, errno.EDQUOT):
        with pytest.raises(StoreNoSpaceError) as info:
            retry_call(raising(OSError(code, "full")), what="writing u", url="/data/store", sleep=pytest.fail)
        assert info.value.errno == errno.ENOSPC
        assert str(info.value).startswith("no space left on device writing /data/store (writing u)")


def test_missing_credentials_name_how_to_give_them():
    for exc in (NoCredentialsError(), OSError("Unable to locate credentials")):
        with pytest.raises(StoreAccessError) as info:
            retry_call(raising(exc), what="listing", url="s3://b/p", sleep=pytest.fail)
        msg = str(info.value)
        assert msg.startswith("no credentials for the object store: listing at s3://b/p"), msg
        assert "AWS_ACCESS_KEY_ID" in msg and "--storage-option key=" in msg, msg


def test_an_http_403_with_any_code_is_access_denied_and_a_404_is_raised_unchanged():
    with pytest.raises(StoreAccessError, match=r"access denied: r at s3://b/p .*check the credentials"):
        retry_call(raising(client_error("Forbidden", 403)), what="r", url="s3://b/p", sleep=pytest.fail)
    missing = client_error("NoSuchKey", 404)
    with pytest.raises(ClientError) as info:  # an ordinary answer: callers handle it
        retry_call(raising(missing), what="r", url="s3://b/p", sleep=pytest.fail)
    assert info.value is missing


def test_an_error_a_nested_retry_already_raised_passes_through_unchanged():
    """A store operation that itself retries (a reader inside a writer) raises the user-facing error once; the outer
    retry_call neither retries it nor rewrites its message for its own operation."""
    def inner():
        return retry_call(raising(PermissionError(13, "denied")), what="reading a chunk", url="/data/store",
                          sleep=pytest.fail)

    with pytest.raises(StoreAccessError) as info:
        retry_call(inner, what="verifying", url="s3://b/p", sleep=pytest.fail)
    msg = str(info.value)
    assert msg.startswith("access denied: reading a chunk at /data/store") and "verifying" not in msg, msg
