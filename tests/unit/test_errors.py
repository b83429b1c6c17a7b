"""Error IDs, retry actions, the exception tree and the wire form."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipcclient import codec, errors
from ipcclient.errors import ERROR_CLASSES, ErrorID, IPCError, RetryAction
from ipcclient.wire.errorpayload import decode_error, encode_error
from ipcclient.wire.frames import MIN_FRAME_PAYLOAD

REQUIRED = [
    "Unknown", "Internal", "BadArg", "BadProtocol", "BadState", "NoExist", "NoServers",
    "NoAccess", "NotTrusted", "Timeout", "Canceled", "Aborted", "VersionIncompatible",
    "UnknownMethod",
]  # fmt: skip


@pytest.mark.parametrize("name", REQUIRED)
def test_every_required_id_has_a_class(name: str) -> None:
    cls = ERROR_CLASSES[f"ipc.{name}"]
    err = cls("boom")
    assert isinstance(err, IPCError)
    assert err.id == f"ipc.{name}"
    assert isinstance(err.action, RetryAction)


def test_every_error_id_is_registered_once() -> None:
    assert {e.value for e in ErrorID} == set(ERROR_CLASSES)


@pytest.mark.parametrize(
    ("cls", "action"),
    [
        (errors.NoServersError, RetryAction.RETRY_REFETCH),
        (errors.ConnectionFailedError, RetryAction.RETRY_CONNECTION),
        (errors.OverloadedError, RetryAction.RETRY_BACKOFF),
        (errors.NoAccessError, RetryAction.NO_RETRY),
        (errors.NotTrustedError, RetryAction.NO_RETRY),
        (errors.BadProtocolError, RetryAction.NO_RETRY),
        (errors.TimeoutError, RetryAction.NO_RETRY),
    ],
)
def test_default_actions(cls: type[IPCError], action: RetryAction) -> None:
    assert cls().action is action
    assert cls().retryable is (action is not RetryAction.NO_RETRY)


def test_action_can_be_overridden_per_instance() -> None:
    err = errors.InternalError("try later", action=RetryAction.RETRY_BACKOFF)
    assert err.action is RetryAction.RETRY_BACKOFF
    assert err.retryable


def test_catch_by_kind() -> None:
    with pytest.raises(errors.NoAccessError):
        raise errors.BadDischargeError("discharge refused", "caveat-id")
    with pytest.raises(IPCError):
        raise errors.CanceledError("stop")


def test_str_is_one_line_and_details_say_what_was_tried_and_whether_it_ran() -> None:
    err = errors.NoServersError("nobody home").with_context(
        request_sent=False, tried=["resolved a/b", "dialed @tcp@127.0.0.1:1"]
    )
    assert str(err) == "ipc.NoServers: nobody home"
    details = err.details()
    assert details.splitlines()[0] == str(err)
    assert "request was not sent" in details
    assert "dialed @tcp@127.0.0.1:1" in details and "RETRY_REFETCH" in details
    assert isinstance(err, errors.NoServersError)
    assert err.request_sent is False
    sent = errors.TimeoutError("slow").with_context(request_sent=True)
    assert "may have reached the server" in sent.details()
    assert "IPCError" not in repr(sent) and "TimeoutError" in repr(sent)


def test_with_context_keeps_identity_and_appends_tried() -> None:
    cause = ValueError("root")
    try:
        raise errors.NoExistError("x", 1, 2, tried=["a"]) from cause
    except errors.NoExistError as e:
        clone = e.with_context(tried=["b"])
    assert clone == errors.NoExistError("x", 1, 2)
    assert clone.tried == ("a", "b")
    assert clone.__cause__ is cause


@pytest.mark.parametrize("cls", list(ERROR_CLASSES.values()))
def test_wire_round_trip_through_codec(cls: type[IPCError]) -> None:
    err = cls("message", "component", 7, b"\x00", id=cls.error_id)
    back = codec.decode(codec.encode(err))
    assert type(back) is cls
    assert back == err
    assert back.params == ("component", 7, b"\x00")


def test_unknown_peer_id_survives_with_its_id_and_action() -> None:
    wire = {"id": "com.example.Quota", "action": 3, "msg": "over quota", "params": [1]}
    err = errors.from_wire(wire)
    assert type(err) is IPCError
    assert err.id == "com.example.Quota"
    assert err.action is RetryAction.RETRY_BACKOFF
    again = codec.decode(codec.encode(err))
    assert again.id == "com.example.Quota" and again.action is RetryAction.RETRY_BACKOFF


def test_unknown_action_codes_fail_safe() -> None:
    assert errors.from_wire({"id": "ipc.Internal", "action": 99}).action is RetryAction.NO_RETRY
    assert errors.from_wire({"id": "ipc.Internal", "action": True}).action is (RetryAction.NO_RETRY)
    assert RetryAction.from_wire("2") is RetryAction.NO_RETRY


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"id": 5},
        {"id": ""},
        {"id": "x" * 1000},
        {"id": "ipc.Internal", "msg": 5},
        {"id": "ipc.Internal", "params": "nope"},
    ],
)
def test_malformed_wire_errors_are_bad_protocol(bad: object) -> None:
    with pytest.raises(errors.BadProtocolError):
        errors.from_wire(bad)


def test_wire_bounds() -> None:
    err = errors.from_wire(
        {"id": "ipc.Internal", "msg": "m" * (errors.MAX_WIRE_MSG_LEN + 10), "params": [0] * 500}
    )
    assert len(err.msg) == errors.MAX_WIRE_MSG_LEN
    assert len(err.params) == errors.MAX_WIRE_PARAMS


def test_equality_and_hash() -> None:
    a = errors.InternalError("x")
    assert a == errors.InternalError("x")
    assert a != errors.InternalError("y")
    assert a != "x"
    assert hash(a) == hash(errors.InternalError("x"))


@given(
    wid=st.text(min_size=1, max_size=40),
    action=st.integers(min_value=-5, max_value=10),
    msg=st.text(max_size=50),
    params=st.lists(st.one_of(st.integers(), st.text(max_size=10), st.binary(max_size=10))),
)
def test_any_wire_error_round_trips(wid: str, action: int, msg: str, params: list[object]) -> None:
    err = errors.from_wire({"id": wid, "action": action, "msg": msg, "params": params})
    back = codec.decode(codec.encode(err))
    assert back.id == wid
    assert back.msg == msg
    assert list(back.params) == params
    assert back.action is RetryAction.from_wire(action)


def test_str_is_one_printable_line_whatever_the_message() -> None:
    """Text from a peer may hold CR, escapes or BEL: str() shows them escaped, on one line
    (the message itself is kept as it came, in ``msg``)."""
    err = errors.BadProtocolError("a\r\nb\x1b[2J\x07 c\u0085d")
    assert str(err) == "ipc.BadProtocol: a b\\x1b[2J\\x07 c d"
    assert err.msg == "a\r\nb\x1b[2J\x07 c\u0085d"
    assert str(errors.BadArgError("plain  é")) == "ipc.BadArg: plain  é"


@settings(max_examples=200, deadline=None)
@given(
    wid=st.one_of(st.text(max_size=300), st.integers(), st.none()),
    msg=st.one_of(st.text(max_size=2000), st.integers(), st.binary(max_size=8)),
    params=st.lists(st.one_of(st.integers(), st.text(), st.builds(object)), max_size=3),
    room=st.sampled_from([MIN_FRAME_PAYLOAD, 16 * 1024]),
)
def test_a_reset_payload_is_always_an_error_the_peer_reads(
    wid: Any, msg: Any, params: list[Any], room: int
) -> None:
    """Whatever IPCError a caller cancels with (an empty or long ID, a message that is not
    text or not UTF-8, params with no CBOR form), the RESET/GOAWAY payload fits ``room`` and
    decodes: a payload the peer refuses ends the whole VC."""
    err = errors.IPCError(msg, *params, id=wid)
    payload = encode_error(err, room)
    assert len(payload) <= room
    back = decode_error(payload)
    if isinstance(wid, str) and 0 < len(wid) <= 64:
        assert back.id == wid
    assert isinstance(back.msg, str)
    surrogate = errors.CanceledError("bad \udcff text")
    assert decode_error(encode_error(surrogate, room)).msg == "bad ? text"
