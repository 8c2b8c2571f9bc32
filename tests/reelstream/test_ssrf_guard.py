"""The SSRF guard refuses every address that is not globally routable, however it is written."""

import pytest

from reelstream.storage import StorageError, check_url, public_address

REFUSED = [
    ("0.0.0.0", "this network"),
    ("10.1.2.3", "private 10/8"),
    ("100.64.0.1", "shared address space (CGNAT, cloud metadata)"),
    ("100.127.255.254", "shared address space, top"),
    ("127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local metadata"),
    ("172.16.0.1", "private 172.16/12"),
    ("192.0.0.1", "IETF protocol assignments"),
    ("192.0.2.1", "TEST-NET-1"),
    ("192.168.1.1", "private 192.168/16"),
    ("198.18.0.1", "benchmarking"),
    ("198.51.100.1", "TEST-NET-2"),
    ("203.0.113.1", "TEST-NET-3"),
    ("224.0.1.1", "multicast (is_global would say yes)"),
    ("239.255.255.250", "multicast, organisation-local"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:100.64.0.1", "IPv4-mapped shared space"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
    ("100::1", "discard-only"),
    ("2001:db8::1", "documentation"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2002:7f00:1::", "6to4 of 127.0.0.1"),
    ("2002:a00:1::", "6to4 of 10.0.0.1"),
    ("2002:6440:1::", "6to4 of 100.64.0.1"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local (deprecated)"),
    ("ff02::1", "multicast"),
    ("fe80::1%eth0", "link-local with a zone"),
    ("not-an-address", "unparseable"),
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_refused(address: str, why: str) -> None:
    assert not public_address(address), why


@pytest.mark.parametrize("address", ALLOWED)
def test_allowed(address: str) -> None:
    assert public_address(address)


@pytest.mark.parametrize(
    "url",
    [
        "http://100.64.0.1/x.mp4",
        "http://[2002:7f00:1::]/x.mp4",
        "http://[::ffff:10.0.0.1]:8080/",
        "http://[64:ff9b::a9fe:a9fe]/",
    ],
)
async def test_check_url_refuses_them_before_connecting(url: str) -> None:
    with pytest.raises(StorageError, match="non-public"):
        await check_url(url, allow_private=False)
    await check_url(url, allow_private=True)  # the operator's explicit opt-in still works
