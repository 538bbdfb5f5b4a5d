"""The time zones a reader is offered: canonical IANA zones, grouped by region.

`zoneinfo.available_timezones()` also lists legacy aliases ("US/Eastern",
"Asia/Calcutta"), "Etc/GMT+5" (whose sign is the reverse of what people expect),
"Factory", "localtime" and "posixrules": none is a place a reader lives. The
canonical list is tzdata's `zone.tab` (one or more zones per country, the list
operating systems offer) plus UTC. Aliases are kept only as search words and to
map a browser's guess ("Asia/Calcutta" in some browsers) to the zone offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

UTC = "UTC"


@dataclass(frozen=True)
class Zone:
    name: str  # the IANA name, the value stored
    label: str  # what a reader reads: "Berlin (Germany)"
    region: str  # the optgroup: "Europe"
    search: str  # lower-case words a search matches: city, country, old names


@dataclass(frozen=True)
class Region:
    name: str
    zones: tuple[Zone, ...]


def _tzdata_text(name: str) -> str:
    return resources.files("tzdata.zoneinfo").joinpath(name).read_text(encoding="utf-8")


def _rows(name: str) -> list[list[str]]:
    return [
        line.split("\t")
        for line in _tzdata_text(name).splitlines()
        if line.strip() and not line.startswith("#")
    ]


@lru_cache(maxsize=1)
def _countries() -> dict[str, str]:
    return {row[0]: row[1] for row in _rows("iso3166.tab") if len(row) >= 2}


@lru_cache(maxsize=1)
def _zone_countries() -> dict[str, str]:
    """Canonical zone -> country code, from zone.tab."""
    return {row[2]: row[0] for row in _rows("zone.tab") if len(row) >= 3}


@lru_cache(maxsize=1)
def aliases() -> dict[str, str]:
    """Legacy name -> the canonical zone it links to ("Asia/Calcutta" -> "Asia/Kolkata")."""
    canonical = set(_zone_countries()) | {UTC}
    links: dict[str, str] = {}
    for line in _tzdata_text("tzdata.zi").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "L" and parts[2] not in canonical:
            links[parts[2]] = parts[1]
    # UTC's other names (GMT, Zulu, Etc/UTC...) all mean the UTC offered.
    links.update({"Etc/UTC": UTC, "Etc/GMT": UTC})
    # A link to a link ends at a canonical zone (or is dropped).
    resolved = {}
    for alias, target in links.items():
        for _ in range(5):
            if target in canonical:
                resolved[alias] = target
                break
            target = links.get(target, "")
    return resolved


def _words(name: str) -> str:
    return name.replace("_", " ").replace("/", " ").lower()


def _label(name: str, country: str) -> str:
    parts = name.replace("_", " ").split("/")[1:]
    place = ", ".join(reversed(parts))  # "Indianapolis, Indiana"
    return f"{place} ({country})" if country else place


@lru_cache(maxsize=1)
def old_names() -> dict[str, str]:
    """Canonical zone -> its legacy names, space-separated ("Asia/Calcutta")."""
    found: dict[str, list[str]] = {}
    for alias, target in aliases().items():
        found.setdefault(target, []).append(alias)
    return {zone: " ".join(sorted(names)) for zone, names in found.items()}


@lru_cache(maxsize=1)
def regions() -> tuple[Region, ...]:
    """Every canonical zone, by region (the part before the first slash), by label."""
    countries = _countries()
    grouped: dict[str, list[Zone]] = {}
    for name, code in _zone_countries().items():
        country = countries.get(code, "")
        search = " ".join([_words(name), country.lower(), _words(old_names().get(name, ""))])
        region = name.split("/", 1)[0]
        grouped.setdefault(region, []).append(Zone(name, _label(name, country), region, search))
    utc_words = "utc coordinated universal " + _words(old_names().get(UTC, ""))
    utc = Zone(UTC, "UTC (Coordinated Universal Time)", UTC, utc_words)
    by_region = (
        Region(region, tuple(sorted(zones, key=lambda z: z.label)))
        for region, zones in sorted(grouped.items())
    )
    return (Region(UTC, (utc,)), *by_region)


@lru_cache(maxsize=1)
def canonical_names() -> frozenset[str]:
    return frozenset(zone.name for region in regions() for zone in region.zones)


def canonical(name: str) -> str:
    """The offered zone for a name (itself, or what a legacy alias links to)."""
    if name in canonical_names():
        return name
    return aliases().get(name, name)


def search(query: str) -> list[str]:
    """Zones whose city, country or old name contains every word of `query`."""
    words = query.lower().split()
    return [
        zone.name
        for region in regions()
        for zone in region.zones
        if words and all(word in zone.search for word in words)
    ]
