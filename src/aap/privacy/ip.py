"""Client addresses: the only code that sees a raw IP.

A raw address is resolved (socket peer, ``X-Forwarded-For`` from trusted proxies only,
``context.ip`` from server-side SDKs), looked up for coarse geography (country, region,
city) in the offline GeoLite2 database that ``maxminddb-geolite2`` ships, and then
truncated (IPv4 /24, IPv6 /48 by default). Only the truncated form and the coarse
location leave this module; nothing here logs or stores the raw address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from aap.events import Geo

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, ::1"`` → networks; raises ValueError naming a bad entry."""
    nets = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not an IP network: {part!r}") from None
    return tuple(nets)


def _geolite_path() -> Path | None:
    try:
        import _maxminddb_geolite2
    except ImportError:
        return None
    path = Path(_maxminddb_geolite2.__file__).parent / "GeoLite2-City.mmdb"
    return path if path.exists() else None


class GeoLocator:
    def __init__(self, path: Path | None = None) -> None:
        import maxminddb

        path = path or _geolite_path()
        self._reader: Any = maxminddb.open_database(str(path)) if path else None
        self.lookup = lru_cache(maxsize=65536)(self._lookup)

    def _lookup(self, ip: str) -> Geo | None:
        if self._reader is None:
            return None
        try:
            rec = self._reader.get(ip)
        except ValueError:
            return None
        if not rec:
            return None
        country = (rec.get("country") or rec.get("registered_country") or {}).get("iso_code")
        subs = rec.get("subdivisions") or []
        region = subs[0].get("iso_code") if subs else None
        city = ((rec.get("city") or {}).get("names") or {}).get("en")
        if not (country or region or city):
            return None
        return Geo(country=country, region=region, city=city)


class IpPolicy:
    def __init__(
        self,
        trusted_proxies: Iterable[IPNetwork] = (),
        v4_prefix: int = 24,
        v6_prefix: int = 48,
        geo: GeoLocator | None = None,
    ) -> None:
        if not 0 <= v4_prefix <= 32 or not 0 <= v6_prefix <= 128:
            raise ValueError("ipv4_prefix must be 0..32 and ipv6_prefix 0..128")
        self.trusted = tuple(trusted_proxies)
        self.v4_prefix = v4_prefix
        self.v6_prefix = v6_prefix
        self.geo = geo
        self._anon = lru_cache(maxsize=65536)(self._anonymize)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: the peer, or the nearest untrusted hop of X-Forwarded-For
        when the peer is a trusted proxy."""
        if peer is None or not forwarded_for or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def anonymize(self, ip: str | None) -> tuple[str | None, Geo | None]:
        """Raw address → (truncated address, coarse location). Invalid input → (None, None)."""
        if not ip or not isinstance(ip, str):
            return None, None
        return self._anon(ip)

    def _anonymize(self, ip: str) -> tuple[str | None, Geo | None]:
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError:
            return None, None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        geo = self.geo.lookup(str(addr)) if self.geo else None
        prefix = self.v4_prefix if addr.version == 4 else self.v6_prefix
        truncated = ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address
        return str(truncated), geo


def strip_ip(context: dict[str, Any]) -> str | None:
    """Remove and return ``context.ip`` (sent by server-side SDKs for the end user)."""
    ip = context.pop("ip", None)
    return ip if isinstance(ip, str) else None
