"""Synthetic account infrastructure: IP addresses, user agents, ids, countries.

Everything here is drawn from a caller-supplied ``numpy.random.Generator`` so a seed fixes
the whole simulation. The address plans are *plausible*, not real allocations: residential
addresses come from first octets that consumer ISPs commonly use, cloud addresses from first
octets of large cloud providers, so that a detector keying on /24 or /16 prefixes sees the
same structure it would see in production (many /24s for a residential proxy pool, one or two
/24s for a cloud deployment, a handful of addresses for a university NAT).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["COUNTRIES", "Infra", "tz_offsets", "ua_browser", "ua_sdk"]

# First octets typical of consumer ISP space (cable/DSL/fibre/mobile) in several regions.
_RESIDENTIAL_OCTETS = np.array([
    24, 31, 37, 46, 47, 49, 58, 59, 60, 61, 62, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98, 99,
    100, 101, 106, 108, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123,
    124, 125, 171, 172, 173, 174, 175, 176, 177, 178, 179, 180, 181, 182, 183, 186, 187, 188,
    189, 190, 191, 200, 201, 203, 210, 211, 212, 213, 217, 218, 219, 220, 221, 222,
])
# First octets of large public-cloud ranges (AWS, GCP, Azure, OCI, DigitalOcean-like).
_CLOUD_OCTETS = np.array([3, 13, 18, 20, 34, 35, 40, 44, 52, 54, 104, 129, 137, 138, 146, 159,
                          164, 165, 167])

#: ISO country code -> (sampling weight for ordinary users, UTC offset in hours).
COUNTRIES: dict[str, tuple[float, float]] = {
    "US": (28, -6), "IN": (9, 5.5), "GB": (6, 0), "DE": (6, 1), "FR": (4, 1), "CA": (4, -5),
    "BR": (4, -3), "JP": (4, 9), "KR": (3, 9), "AU": (2.5, 10), "NL": (2, 1), "ES": (2.5, 1),
    "IT": (2, 1), "PL": (1.5, 1), "SG": (1.5, 8), "MX": (2, -6), "ID": (2, 7), "TR": (1.5, 3),
    "VN": (1.5, 7), "NG": (1, 1), "SE": (1, 1), "IL": (1, 2), "AR": (1, -3), "ZA": (1, 2),
    "PH": (1.5, 8), "UA": (1, 2), "TW": (1, 8), "HK": (1, 8), "CH": (1, 1), "EG": (0.8, 2),
}

_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.{m} Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{f}.0) Gecko/20100101 Firefox/{f}.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{m} like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.{m} Mobile/15E148 Safari/604.1",
)


def ua_browser(rng: np.random.Generator) -> str:
    """A desktop/mobile browser user agent (playground and web-app users)."""
    t = _BROWSERS[int(rng.integers(len(_BROWSERS)))]
    return t.format(v=int(rng.integers(118, 131)), m=int(rng.integers(0, 7)),
                    f=int(rng.integers(120, 133)))


def ua_sdk(rng: np.random.Generator, family: str | None = None) -> str:
    """A programmatic client user agent: official SDKs, raw HTTP libraries, curl."""
    fams = ("openai-python", "openai-node", "httpx", "requests", "aiohttp", "curl",
            "langchain", "go")
    p = np.array([0.42, 0.16, 0.1, 0.12, 0.06, 0.04, 0.06, 0.04])
    fam = family or fams[int(rng.choice(len(fams), p=p))]
    i = lambda a, b: int(rng.integers(a, b))  # noqa: E731
    if fam == "openai-python":
        return f"OpenAI/Python 1.{i(30, 66)}.{i(0, 10)}"
    if fam == "openai-node":
        return f"OpenAI/JS 4.{i(40, 80)}.{i(0, 6)}"
    if fam == "httpx":
        return f"python-httpx/0.{i(25, 29)}.{i(0, 3)}"
    if fam == "requests":
        return f"python-requests/2.{i(28, 33)}.{i(0, 4)}"
    if fam == "aiohttp":
        return f"Python/3.{i(9, 13)} aiohttp/3.{i(8, 11)}.{i(0, 6)}"
    if fam == "curl":
        return f"curl/{i(7, 9)}.{i(0, 12)}.{i(0, 2)}"
    if fam == "langchain":
        return f"langchain-openai/0.{i(1, 3)}.{i(0, 20)} OpenAI/Python 1.{i(30, 66)}.{i(0, 10)}"
    return f"Go-http-client/{i(1, 3)}.{i(0, 2)}"


@dataclass
class Infra:
    """Allocator for addresses and identifiers, bound to one random generator.

    Keeping allocation in one object lets populations share address blocks on purpose
    (a household NAT, a university, a proxy pool) while otherwise never colliding by accident.
    """

    rng: np.random.Generator

    # ---- identifiers -------------------------------------------------------------------
    def hex_ids(self, n: int, prefix: str, nbytes: int = 6) -> list[str]:
        """``n`` random ids like ``acct_3f9a0c12ab77`` (random, so ids leak no ordering)."""
        raw = self.rng.bytes(n * nbytes).hex()
        w = 2 * nbytes
        return [prefix + raw[k * w:(k + 1) * w] for k in range(n)]

    def payment(self, n: int) -> list[str]:
        """Payment-method fingerprints: 16 hex chars, as a PSP would expose."""
        return self.hex_ids(n, "", 8)

    def org_ids(self, n: int) -> list[str]:
        alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
        chars = alphabet[self.rng.integers(0, len(alphabet), size=(n, 24))]
        return ["org-" + "".join(row) for row in chars]

    # ---- addresses -----------------------------------------------------------------------
    def _ips(self, first: np.ndarray, n: int) -> list[str]:
        a = self.rng.choice(first, size=n)
        bcd = self.rng.integers(0, 256, size=(n, 3))
        bcd[:, 2] = np.clip(bcd[:, 2], 2, 253)
        return [f"{x}.{y}.{z}.{w}" for x, (y, z, w) in zip(a.tolist(), bcd.tolist(), strict=True)]

    def residential(self, n: int, ipv6_share: float = 0.0) -> list[str]:
        """``n`` residential addresses, each in its own random /24 (consumer ISP space)."""
        ips = self._ips(_RESIDENTIAL_OCTETS, n)
        if ipv6_share > 0:
            v6 = np.flatnonzero(self.rng.random(n) < ipv6_share)
            for k in v6.tolist():
                h = self.rng.integers(0, 65536, size=6).tolist()
                ips[k] = "2a0{}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}::{:x}".format(
                    int(self.rng.integers(0, 10)), *h, int(self.rng.integers(1, 65535)))
        return ips

    def block24(self, cloud: bool) -> str:
        """A random /24 prefix like ``34.118.7`` in cloud or residential space."""
        first = _CLOUD_OCTETS if cloud else _RESIDENTIAL_OCTETS
        a = int(self.rng.choice(first))
        b, c = self.rng.integers(0, 256, size=2).tolist()
        return f"{a}.{b}.{c}"

    def in_block(self, prefix: str, n: int, lo: int = 2, hi: int = 254) -> list[str]:
        """``n`` distinct hosts (or as many as fit) inside one /24 prefix."""
        hosts = self.rng.choice(np.arange(lo, hi), size=min(n, hi - lo), replace=False)
        return [f"{prefix}.{h}" for h in hosts.tolist()]

    def cloud(self, n: int, n_blocks: int = 1) -> list[str]:
        """``n`` cloud addresses spread over ``n_blocks`` /24s (one deployment's egress)."""
        blocks = [self.block24(cloud=True) for _ in range(max(1, n_blocks))]
        per = -(-n // len(blocks))
        out: list[str] = []
        for b in blocks:
            out.extend(self.in_block(b, per))
        return out[:n]

    def countries(self, n: int, pool: dict[str, float] | None = None) -> np.ndarray:
        """Sample ISO country codes; ``pool`` overrides the default weights."""
        pool = pool or {c: w for c, (w, _) in COUNTRIES.items()}
        codes = np.array(list(pool))
        w = np.array(list(pool.values()), dtype=float)
        return self.rng.choice(codes, size=n, p=w / w.sum())


def tz_offsets(countries: np.ndarray) -> np.ndarray:
    """UTC offset in hours per country code (one representative zone per country)."""
    return np.array([COUNTRIES.get(str(c), (0, 0.0))[1] for c in countries], dtype=float)
