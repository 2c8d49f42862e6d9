"""Client addresses (aap.privacy.ip), in-process: which address is the client's, and its
truncation; tests/privacy/test_ip_canary.py checks that no raw address reaches the disk."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aap.privacy.ip import IpPolicy, parse_networks, strip_ip


@given(st.ip_addresses(), st.integers(0, 32), st.integers(0, 128))
def test_the_truncated_address_is_the_network_of_its_prefix(addr: ipaddress.IPv4Address
                                                            | ipaddress.IPv6Address,
                                                            v4: int, v6: int) -> None:
    truncated, geo = IpPolicy(v4_prefix=v4, v6_prefix=v6).anonymize(str(addr))
    assert geo is None  # no GeoLocator given
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # an IPv4-mapped address is truncated as IPv4
    prefix = v4 if addr.version == 4 else v6
    net = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    assert truncated == str(net.network_address)


def test_default_prefixes_and_mapped_addresses() -> None:
    policy = IpPolicy()
    assert policy.anonymize("203.0.113.77") == ("203.0.113.0", None)
    assert policy.anonymize("2001:db8:1234:5678::1") == ("2001:db8:1234::", None)
    assert policy.anonymize("::ffff:198.51.100.9") == ("198.51.100.0", None)  # IPv4-mapped
    assert policy.anonymize(" 192.0.2.1 ") == ("192.0.2.0", None)
    for bad in ("", None, "not-an-ip", "300.1.1.1", 42):
        assert policy.anonymize(bad) == (None, None)  # type: ignore[arg-type]


def test_prefixes_out_of_range_are_refused() -> None:
    for v4, v6 in ((33, 48), (-1, 48), (24, 129)):
        with pytest.raises(ValueError):
            IpPolicy(v4_prefix=v4, v6_prefix=v6)


def test_forwarded_for_is_read_only_from_trusted_proxies() -> None:
    policy = IpPolicy(parse_networks("10.0.0.0/8, ::1"))
    xff = "198.51.100.7, 203.0.113.5, 10.1.1.1"
    assert policy.client_ip("192.0.2.1", xff) == "192.0.2.1"  # untrusted peer: header ignored
    assert policy.client_ip("10.0.0.2", xff) == "203.0.113.5"  # nearest untrusted hop
    assert policy.client_ip("::1", "10.2.2.2, 10.3.3.3") == "10.2.2.2"  # all trusted: the first
    assert policy.client_ip("10.0.0.2", " , ") == "10.0.0.2"
    assert policy.client_ip("10.0.0.2", None) == "10.0.0.2"
    assert policy.client_ip(None, xff) is None


@given(st.lists(st.ip_addresses().map(str), min_size=1, max_size=5))
def test_the_client_is_never_a_trusted_hop_unless_all_are(hops: list[str]) -> None:
    trusted = parse_networks("10.0.0.0/8")
    policy = IpPolicy(trusted)
    got = policy.client_ip("10.0.0.1", ", ".join(hops))
    assert got in hops
    if any(not any(ipaddress.ip_address(h) in n for n in trusted) for h in hops):
        assert not any(ipaddress.ip_address(got) in n for n in trusted)


def test_parse_networks() -> None:
    assert parse_networks("") == ()
    assert parse_networks(" 10.0.0.0/8 ,, 192.168.1.7 ") == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"))
    assert parse_networks("10.1.2.3/8") == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(ValueError, match="not an IP network: 'nope'"):
        parse_networks("10.0.0.0/8, nope")


def test_strip_ip_takes_the_address_out_of_the_context() -> None:
    ctx = {"ip": "192.0.2.1", "locale": "fr"}
    assert strip_ip(ctx) == "192.0.2.1" and ctx == {"locale": "fr"}
    ctx2: dict[str, object] = {"ip": 5}
    assert strip_ip(ctx2) is None and ctx2 == {}
    assert strip_ip({}) is None
