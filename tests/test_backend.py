"""Value types: validation of every field, immutability, group operations, from_config."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import pickle
import re
from collections.abc import Iterator, Sequence
from typing import Any, overload

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbalgo import (
    MAX_BACKENDS,
    MAX_NAME_LENGTH,
    MAX_WEIGHT,
    Backend,
    BackendGroup,
    InvalidBackendError,
    InvalidGroupError,
    LbalgoError,
    UnknownBackendError,
)
from lbalgo.testing import backends, groups


def refusal(**fields: Any) -> InvalidBackendError:
    """The InvalidBackendError refusing a Backend of these fields over valid defaults."""
    args: dict[str, Any] = {"host": "10.0.0.1", "port": 80, "weight": 1, "name": None}
    args.update(fields)
    with pytest.raises(InvalidBackendError) as caught:
        Backend(args["host"], args["port"], args["weight"], name=args["name"])
    return caught.value


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"weight": 101}, "weight", "101"),
        ({"weight": -1}, "weight", "-1"),
        ({"weight": True}, "weight", "True"),
        ({"weight": 2.5}, "weight", "2.5"),
        ({"weight": "5"}, "weight", "'5'"),
        ({"weight": None}, "weight", "None"),
        ({"port": 0}, "port", "0"),
        ({"port": 65536}, "port", "65536"),
        ({"port": "80"}, "port", "'80'"),
        ({"port": False}, "port", "False"),
        ({"host": ""}, "host", "''"),
        ({"host": None}, "host", "None"),
        ({"host": "10.0.0.1:80"}, "host", "'10.0.0.1:80'"),
        ({"host": "[2001:db8::1]"}, "host", "'[2001:db8::1]'"),
        ({"host": "bad host"}, "host", "'bad host'"),
        ({"host": "a" * 254}, "host", "aaaa"),
        ({"name": ""}, "name", "''"),
        ({"name": 7}, "name", "7"),
    ],
)
def test_bad_backend_fields_name_the_field_and_value(
    kwargs: dict[str, Any], field: str, shown: str
) -> None:
    error = refusal(**kwargs)
    assert field in str(error)
    assert shown in str(error)
    assert isinstance(error, ValueError)
    assert isinstance(error, LbalgoError)


@pytest.mark.parametrize("weight", [0, 1, 50, MAX_WEIGHT])
def test_weights_in_range_are_accepted(weight: int) -> None:
    assert Backend("10.0.0.1", 80, weight).weight == weight


@pytest.mark.parametrize(
    ("backend", "key"),
    [
        (Backend("10.0.0.1", 80), "10.0.0.1:80"),
        (Backend("2001:db8::1", 443), "[2001:db8::1]:443"),
        (Backend("db.internal", 5432), "db.internal:5432"),
        (Backend("10.0.0.1", 80, name="web-1"), "web-1"),
    ],
)
def test_key(backend: Backend, key: str) -> None:
    assert backend.key == key


def test_backend_is_frozen_hashable_and_compares_by_value() -> None:
    a = Backend("10.0.0.1", 80, 5)
    b = Backend("10.0.0.1", 80, 5)
    assert a == b
    assert hash(a) == hash(b)
    assert a != a.with_weight(6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.weight = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(a)) == a
    assert copy.deepcopy(a) == a
    assert a.with_weight(6).key == a.key


def test_with_weight_validates() -> None:
    with pytest.raises(InvalidBackendError, match="weight"):
        Backend("10.0.0.1", 80).with_weight(101)


@given(backends())
def test_generated_backends_round_trip(backend: Backend) -> None:
    assert Backend(backend.host, backend.port, backend.weight) == backend
    assert backend.address.endswith(f":{backend.port}")


def _group(*weights: int) -> BackendGroup:
    return BackendGroup(Backend(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights))


def test_group_basics() -> None:
    group = _group(5, 1, 0)
    assert len(group) == 3
    assert group.keys() == ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
    assert [b.weight for b in group] == [5, 1, 0]
    assert group.total_weight == 6
    assert "10.0.0.2:80" in group
    assert "10.0.0.9:80" not in group
    assert group["10.0.0.1:80"].weight == 5
    assert group.get("nope") is None
    assert group.index("10.0.0.3:80") == 2
    with pytest.raises(KeyError, match="nope"):
        group["nope"]


def test_group_is_immutable_hashable_and_compares_by_value() -> None:
    group = _group(1, 2)
    assert group == _group(1, 2)
    assert hash(group) == hash(_group(1, 2))
    assert group != _group(2, 1)
    with pytest.raises(AttributeError):
        group._backends = ()
    assert pickle.loads(pickle.dumps(group)) == group


def test_group_limits() -> None:
    BackendGroup(Backend("10.0.0.1", p + 1) for p in range(MAX_BACKENDS))
    with pytest.raises(InvalidGroupError, match="501"):
        BackendGroup(Backend("10.0.0.1", p + 1) for p in range(MAX_BACKENDS + 1))
    with pytest.raises(InvalidGroupError, match=r"entry 1: duplicate backend key '10.0.0.1:80'"):
        BackendGroup([Backend("10.0.0.1", 80, 1), Backend("10.0.0.1", 80, 2)])
    with pytest.raises(InvalidGroupError, match="entry 1"):
        BackendGroup([Backend("10.0.0.1", 80), "10.0.0.2:80"])  # type: ignore[list-item]
    with pytest.raises(InvalidGroupError):
        BackendGroup("10.0.0.1:80")  # type: ignore[arg-type]


def test_group_operations_return_new_groups() -> None:
    group = _group(5, 1, 1)
    replaced = group.with_backend(Backend("10.0.0.2", 80, 9))
    assert [b.weight for b in replaced] == [5, 9, 1]  # replaced in place, order kept
    added = group.with_backend(Backend("10.0.0.9", 80, 2))
    assert added.keys()[-1] == "10.0.0.9:80"
    assert group.without("10.0.0.1:80").keys() == ("10.0.0.2:80", "10.0.0.3:80")
    assert group.with_weight("10.0.0.3:80", 0)["10.0.0.3:80"].weight == 0
    assert group == _group(5, 1, 1)
    with pytest.raises(KeyError, match="nope"):
        group.without("nope")
    with pytest.raises(KeyError, match="nope"):
        group.with_weight("nope", 1)
    with pytest.raises(InvalidBackendError, match="101"):
        group.with_weight("10.0.0.1:80", 101)
    added_full = BackendGroup(Backend("10.0.0.1", p + 1) for p in range(MAX_BACKENDS))
    with pytest.raises(InvalidGroupError):
        added_full.with_backend(Backend("10.0.0.2", 1))


@given(groups(), backends(), st.data())
def test_group_operations_never_change_the_original(
    group: BackendGroup, backend: Backend, data: st.DataObject
) -> None:
    snapshot = tuple(group)
    try:
        group.with_backend(backend)
    except InvalidGroupError:
        assert len(group) == MAX_BACKENDS
    if len(group):
        key = data.draw(st.sampled_from(group.keys()))
        group.without(key)
        group.with_weight(key, data.draw(st.integers(0, MAX_WEIGHT)))
    assert tuple(group) == snapshot


def test_from_config() -> None:
    group = BackendGroup.from_config(
        [
            {"host": "10.0.0.1", "port": 80, "weight": 5},
            {"host": "10.0.0.2", "port": 80},
            {"host": "2001:db8::1", "port": 8080, "weight": 0, "name": "v6"},
        ]
    )
    assert [b.weight for b in group] == [5, 1, 0]
    assert group.keys() == ("10.0.0.1:80", "10.0.0.2:80", "v6")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([{"host": "10.0.0.1", "port": 80, "weight": 101}], "entry 0: weight .* 101"),
        ([{"host": "a", "port": 1}, {"host": "b", "port": 0}], "entry 1: port .* 0"),
        ([{"host": "a", "port": 1}, {"port": 80}], "entry 1: missing field 'host'"),
        ([{"host": "a", "port": 1, "wieght": 5}], "entry 0: unknown field 'wieght'"),
        ([{"host": "a", "port": 1, "weight": True}], "entry 0: weight .* True"),
        ([{"host": "a", "port": 1}, {"host": "a", "port": 1}], "entry 1: duplicate"),
        ([["a", 1]], "entry 0: expected a mapping"),
        ({"host": "a", "port": 1}, "list of backend entries"),
        ("a:1", "list of backend entries"),
    ],
)
def test_from_config_errors_name_the_entry(config: Any, message: str) -> None:
    with pytest.raises(InvalidGroupError, match=message):
        BackendGroup.from_config(config)


# -- bounded input and one key per endpoint (issue 17) -----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"host": "a" * 1_000_000}, "host", "(1000000 characters)"),
        ({"host": "x" * 64 + ".example"}, "host", "xxxx"),  # a label over 63 characters
        ({"host": ".".join(["a" * 63] * 4) + ".b"}, "host", "aaaa"),  # 256 characters
        ({"host": "-web.example"}, "host", "'-web.example'"),
        ({"host": "web..example"}, "host", "'web..example'"),
        ({"host": "web/1"}, "host", "'web/1'"),
        ({"host": "10.1"}, "host", "'10.1'"),  # inet_aton would read it as 10.0.0.1
        ({"host": "010.0.0.1"}, "host", "'010.0.0.1'"),  # octal to inet_aton
        ({"host": "2001:db8::1:80"[:-1] + "g"}, "host", "2001:db8::1:8g"),
        ({"port": 10**400}, "port", "an integer of 401 digits"),
        ({"weight": 10**5000}, "weight", "an integer of 5001 digits"),
        ({"weight": -(10**4301)}, "weight", "a negative integer of 4302 digits"),
        ({"name": "n" * (MAX_NAME_LENGTH + 1)}, "name", f"({MAX_NAME_LENGTH + 1} characters)"),
        ({"name": "tab\there"}, "name", r"'tab\there'"),
    ],
)
def test_every_field_is_bounded_and_shown_safely(
    kwargs: dict[str, Any], field: str, shown: str
) -> None:
    message = str(refusal(**kwargs))
    assert message.startswith(f"{field} must be "), message
    assert shown in message
    assert len(message) < 400


@pytest.mark.parametrize(
    "host",
    [
        "a" * 63 + ".example",
        ".".join(["a" * 63] * 3) + "." + "b" * 61,  # 253 characters
        "web_1.internal",
        "example.com.",
        "fe80::1%eth0",
        "::ffff:10.0.0.1",
    ],
)
def test_hosts_dns_allows_are_accepted(host: str) -> None:
    assert Backend(host, 80).host == host


@pytest.mark.parametrize(
    ("spellings", "key"),
    [
        (["10.0.0.1", "::ffff:10.0.0.1", "::FFFF:10.0.0.1", "::ffff:a00:1"], "10.0.0.1:80"),
        (["2001:db8::1", "2001:DB8::1", "2001:db8:0:0:0:0:0:1", "2001:0db8::0001"],
         "[2001:db8::1]:80"),
        (["web.internal", "Web.Internal", "web.internal."], "web.internal:80"),
    ],
)  # fmt: skip
def test_one_endpoint_one_key(spellings: list[str], key: str) -> None:
    """Every spelling of one endpoint has one key (so a group holds it once); ``host`` and
    ``address`` keep the text as written, for nginx-compatible hashing."""
    backends_ = [Backend(host, 80) for host in spellings]
    assert {b.key for b in backends_} == {key}
    assert [b.host for b in backends_] == spellings
    assert all(b.address.endswith(":80") and (b.host in b.address) for b in backends_)
    for other in backends_[1:]:
        with pytest.raises(
            InvalidGroupError, match=rf"entry 1: duplicate backend key '{re.escape(key)}'"
        ):
            BackendGroup([backends_[0], other])


def test_an_endless_iterable_is_read_only_to_entry_501() -> None:
    backend = Backend("10.0.0.1", 80)
    with pytest.raises(InvalidGroupError, match=r"entry 500 \(the 501st backend\)"):
        BackendGroup(itertools.repeat(backend))
    read = 0

    def million() -> Iterator[Backend]:
        nonlocal read
        for port in range(1, 1_000_001):
            read += 1
            yield Backend("10.0.0.1", port % 65535 + 1)

    with pytest.raises(InvalidGroupError, match="at most 500"):
        BackendGroup(million())
    assert read == MAX_BACKENDS + 1


class CountingSequence(Sequence[dict[str, Any]]):
    """A huge config that counts how many entries were read."""

    def __init__(self, size: int) -> None:
        self.size, self.read = size, 0

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            raise NotImplementedError
        if index >= self.size:
            raise IndexError(index)
        self.read += 1
        return {"host": "10.0.0.1", "port": index % 65535 + 1}


def test_a_huge_config_is_read_only_to_entry_501() -> None:
    config = CountingSequence(1_000_000)
    with pytest.raises(InvalidGroupError, match="the 501st backend"):
        BackendGroup.from_config(config)
    assert config.read == MAX_BACKENDS + 1


def test_unknown_keys_are_lbalgo_errors_and_key_errors() -> None:
    group = _group(1, 1)
    for call in (
        lambda: group["nope"],
        lambda: group.without("nope"),
        lambda: group.with_weight("nope", 1),
        lambda: group.index("nope"),
    ):
        with pytest.raises(UnknownBackendError) as caught:
            call()
        assert isinstance(caught.value, KeyError)
        assert isinstance(caught.value, LbalgoError)
        assert "nope" in str(caught.value)


@given(
    host=st.one_of(st.text(max_size=300), st.from_regex(r"\A[a-zA-Z0-9.:_%-]{1,80}\Z")),
    port=st.one_of(st.integers(), st.floats(), st.none(), st.text(max_size=5)),
    weight=st.one_of(st.integers(min_value=-(10**5000), max_value=10**5000), st.booleans()),
)
def test_any_input_gets_a_backend_or_the_typed_error(host: str, port: Any, weight: Any) -> None:
    try:
        backend = Backend(host, port, weight)
    except InvalidBackendError as error:
        message = str(error)
        assert message.split(" must be ")[0] in {"host", "port", "weight"}
        assert len(message) < 400
    else:
        assert Backend(backend.key.rsplit(":", 1)[0].strip("[]"), port, weight).key == backend.key
