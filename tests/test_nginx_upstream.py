"""``lbalgo.nginx.load_upstream``: what it reads, what it builds, and what it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbalgo import (
    InvalidGroupError,
    SmoothWeightedRoundRobin,
    SourceIPHash,
)
from lbalgo.errors import InvalidTypeError
from lbalgo.nginx import load_upstream, parse_time


def test_block_and_bare_directives_agree() -> None:
    body = """
        # the web tier
        server 10.0.0.1:8080 weight=5 max_fails=3 fail_timeout=30s;
        server 10.0.0.2 weight=2 max_fails=3 fail_timeout=30;  # port 80
        server [2001:db8::7]:443 max_fails=3 fail_timeout=30s down;
        server [2001:db8::8] max_fails=3 fail_timeout=30;
    """
    block = load_upstream(f"upstream web {{{body}}}")
    bare = load_upstream(body)
    assert block.name == "web"
    assert bare.name is None
    assert block.group == bare.group
    assert block.group.keys() == ("10.0.0.1:8080", "10.0.0.2", "[2001:db8::7]:443", "[2001:db8::8]")
    hosts = [(b.host, b.port, b.weight) for b in block.group]
    assert hosts == [
        ("10.0.0.1", 8080, 5),
        ("10.0.0.2", 80, 2),
        ("2001:db8::7", 443, 1),
        ("2001:db8::8", 80, 1),
    ]
    assert block.down == frozenset({"[2001:db8::7]:443"})
    assert (block.max_fails, block.fail_timeout) == (3, 30)
    assert [s.line for s in block.servers] == [3, 4, 5, 6]
    assert block.balancing == "round_robin"


def test_nginx_defaults() -> None:
    up = load_upstream("server 127.0.0.1;")
    assert (up.max_fails, up.fail_timeout, up.balancing) == (1, 10, "round_robin")
    assert up.group["127.0.0.1"].port == 80


def test_balancing_directives_build_their_schedulers() -> None:
    servers = "server 10.0.0.1 weight=3; server 10.0.0.2;"
    rr = load_upstream(servers).scheduler()
    assert isinstance(rr, SmoothWeightedRoundRobin)
    hashed = load_upstream("hash $remote_addr consistent; " + servers).scheduler()
    assert isinstance(hashed, SourceIPHash)
    assert hashed.pick("192.0.2.1").key in {"10.0.0.1", "10.0.0.2"}
    assert load_upstream(servers + " least_conn;").balancing == "least_conn"


def test_down_marks_are_applied() -> None:
    up = load_upstream("server a.test:1 weight=9 down; server b.test:1; server c.test:1;")
    sched = up.scheduler()
    assert not sched.is_up("a.test:1")
    assert {sched.pick().key for _ in range(6)} == {"b.test:1", "c.test:1"}


def test_scheduler_passes_options_and_refuses_block_settings() -> None:
    up = load_upstream("server a.test:1; server b.test:1;")
    sched = up.scheduler(slow_start=30.0, clock=lambda: 0.0)
    assert sched.pick().key == "a.test:1"
    for option in ("compat", "max_fails", "fail_timeout"):
        with pytest.raises(InvalidTypeError, match=option):
            up.scheduler(**{option: 1})


def test_neutral_directives_and_quotes() -> None:
    up = load_upstream(
        """upstream "quoted" {
            zone backends 64k;
            keepalive 16;
            keepalive_timeout 60s;
            server '10.0.0.1:81' "weight=4";
        }"""
    )
    assert up.name == "quoted"
    assert up.group["10.0.0.1:81"].weight == 4


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("server 10.0.0.1 backup;", 1, "'backup' is not supported"),
        ("server 10.0.0.1;\nserver 10.0.0.2 resolve;", 2, "'resolve' is not supported"),
        ("server unix:/tmp/app.sock;", 1, "unix sockets"),
        ("ip_hash;\nserver 10.0.0.1;", 1, "'ip_hash' is not supported"),
        ("random two;\nserver 10.0.0.1;", 1, "'random' is not supported"),
        ("hash $remote_addr;\nserver 10.0.0.1;", 1, "only 'hash $remote_addr consistent;'"),
        ("hash $request_uri consistent;\nserver 10.0.0.1;", 1, "only 'hash $remote_addr"),
        ("server 10.0.0.1 weight=0;", 1, "weight=0"),
        ("server 10.0.0.1 weight=101;", 1, "weight=101"),
        ("server 10.0.0.1 weight=-1;", 1, "weight=-1"),
        ("server 10.0.0.1 weight=;", 1, "weight="),
        ("server 10.0.0.1 weight=2.5;", 1, "weight=2.5"),
        ("server 10.0.0.1 max_fails=x;", 1, "max_fails=x"),
        ("server 10.0.0.1 fail_timeout=500ms;", 1, "fail_timeout=500ms"),
        ("server 10.0.0.1 fail_timeout=0;", 1, "fail_timeout=0"),
        ("server 10.0.0.1 max_conns=5;", 1, "max_conns=5"),
        ("server 10.0.0.1 slow_start=30s;", 1, "'slow_start=30s' is not supported"),
        ("server 10.0.0.1 heavy;", 1, "invalid parameter 'heavy'"),
        ("server 10.0.0.1;\n\nproxy_pass http://x;", 3, "unknown directive 'proxy_pass'"),
        ("server 10.0.0.1", 1, "missing ';'"),
        ("server 10.0.0.1;\n}", 2, "unexpected '}'"),
        ("upstream a {\nserver 10.0.0.1;", 1, "never closed"),
        ("upstream a { server 10.0.0.1; }\nserver 10.0.0.2;", 1, "one 'upstream NAME"),
        ("upstream { server 10.0.0.1; }", 1, "one name"),
        ("server 10.0.0.1;\nserver 10.0.0.1;", 2, "listed twice (first on line 1)"),
        ("server 10.0.0.1:0;", 1, "invalid port '0'"),
        ("server 10.0.0.1:70000;", 1, "invalid port '70000'"),
        ("server 10.0.0.1:;", 1, "invalid port ''"),
        ("server 2001:db8::1;", 1, "needs brackets"),
        ("server [2001:db8::zz]:80;", 1, "invalid IPv6 address"),
        ("server [2001:db8::1:80;", 1, "missing ']'"),
        ("server http://10.0.0.1;", 1, "invalid server address"),
        ("server 10.0.0.1/path;", 1, "invalid server address"),
        ("server :80;", 1, "no host"),
        ("server;", 1, "needs an address"),
        ("server 'a b:80';", 1, "host must be"),
        ('server "10.0.0.1;', 1, "unterminated"),
        ('server "10.0.0.1"x;', 1, "after a quoted string"),
        ("least_conn x;\nserver 10.0.0.1;", 1, "takes no arguments"),
        ("least_conn;\nhash $remote_addr consistent;\nserver a;", 2, "set twice"),
        ("keepalive;\nserver 10.0.0.1;", 1, "wrong number of arguments"),
        ("server a.test:1 max_fails=2;\nserver b.test:1;", 2, "max_fails=1"),
        ("server a.test:1 fail_timeout=5;\nserver b.test:1;", 2, "fail_timeout=10s"),
        ("server a.test:1;\nlocation / { }", 2, "unexpected block"),
    ],
)
def test_refused_with_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(InvalidGroupError) as caught:
        load_upstream(text)
    message = str(caught.value)
    assert message.startswith(f"line {line}: ")
    assert words in message


def test_refusals_without_a_line() -> None:
    with pytest.raises(InvalidGroupError, match="no 'server' line"):
        load_upstream("upstream empty { least_conn; }")
    with pytest.raises(InvalidGroupError, match="must be a str"):
        load_upstream(b"server a;")  # type: ignore[arg-type]


def test_more_than_500_servers_names_the_line() -> None:
    text = "\n".join(f"server 10.0.{i // 250}.{i % 250 + 1};" for i in range(501))
    with pytest.raises(InvalidGroupError, match=r"^line 501: more than 500"):
        load_upstream(text)
    assert len(load_upstream("\n".join(text.splitlines()[:500])).group) == 500


def test_max_fails_zero_ignores_fail_timeout() -> None:
    up = load_upstream("server a.test max_fails=0 fail_timeout=5; server b.test max_fails=0;")
    assert up.max_fails == 0
    assert up.scheduler().pick().key == "a.test"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 10), ("10s", 10), ("1m", 60), ("1m30s", 90), ("1h 5m", 3900), ("2d", 172800),
        ("1w", 604800), ("1M", 2592000), ("1y", 31536000), ("10 ", 10), ("007", 7),
    ],
)
def test_parse_time_accepts_nginx_times(text: str, seconds: int) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "5ms", "1s1m", "1m1m", "1 m", "1.5s", "-1", "1x", "99999999999999999999"]
)
def test_parse_time_refuses_what_nginx_refuses(text: str) -> None:
    assert parse_time(text) is None


@given(
    st.lists(
        st.tuples(st.integers(1, 100), st.booleans(), st.integers(1, 65535)),
        min_size=1,
        max_size=20,
        unique_by=lambda t: t[2],
    ),
    st.sampled_from(["", "least_conn;", "hash $remote_addr consistent;"]),
)
def test_round_trip(servers: list[tuple[int, bool, int]], balancing: str) -> None:
    lines = [
        f"server 10.1.2.3:{port} weight={weight}{' down' if down else ''};"
        for weight, down, port in servers
    ]
    up = load_upstream("upstream u {\n" + balancing + "\n" + "\n".join(lines) + "\n}")
    assert [(b.port, b.weight) for b in up.group] == [(p, w) for w, _, p in servers]
    assert up.down == {f"10.1.2.3:{p}" for _, down, p in servers if down}
    assert [s.line for s in up.servers] == list(range(3, 3 + len(servers)))
