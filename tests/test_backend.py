"""Value types: validation of every field, immutability, group operations, from_config."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbalgo import (
    MAX_BACKENDS,
    MAX_WEIGHT,
    Backend,
    BackendGroup,
    InvalidBackendError,
    InvalidGroupError,
    LbalgoError,
)
from lbalgo.testing import backends, groups


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
    args: dict[str, Any] = {"host": "10.0.0.1", "port": 80, "weight": 1, "name": None}
    args.update(kwargs)
    with pytest.raises(InvalidBackendError) as caught:
        Backend(args["host"], args["port"], args["weight"], name=args["name"])
    assert field in str(caught.value)
    assert shown in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, LbalgoError)


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
