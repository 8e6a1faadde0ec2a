"""Privacy-preserving encodings of what a sharing group exchanges.

* Identifiers (account ids, emails, payment fingerprints, API key ids, org ids) are never
  shared in the clear: only ``hmac-sha256:<hex>`` = HMAC-SHA256(group key, normalised value).
  Without the group key a recipient cannot test guesses; with it, any member can hash its own
  identifiers and compare. No per-kind prefix is mixed in, so a provider that does not run
  distillguard can compute the same value with one line of code.
* Prompt templates are shared as MinHash signatures of their skeleton's word 3-shingles
  (``rensa.RMinHash(num_perm=128, seed=42)``), never as text.
* :class:`BloomFilter` optionally packs the HMACs in a compact membership filter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from distillguard.intel._common import MINHASH_NUM_PERM, MINHASH_SEED, IntelError

__all__ = [
    "EMAIL_RE",
    "HMAC_PREFIX",
    "MIN_KEY_BYTES",
    "load_key",
    "key_id",
    "normalize_identifier",
    "hmac_id",
    "is_hmac",
    "skeletonize",
    "shingles",
    "template_signature",
    "parse_signature",
    "signature_jaccard",
    "scrub_user_agent",
    "redact",
    "BloomFilter",
]

HMAC_PREFIX = "hmac-sha256:"
#: A shorter key makes offline guessing of HMAC'd identifiers cheap; 16 bytes = 128 bits.
MIN_KEY_BYTES = 16
SIGNATURE_PREFIX = "rminhash"

_HMAC_RE = re.compile(r"^hmac-sha256:[0-9a-f]{64}$")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def load_key(path: str | Path) -> bytes:
    """Read the sharing group's HMAC key: the file's bytes, surrounding whitespace stripped.

    Raises :class:`IntelError` if the file is missing or the key is shorter than 16 bytes.
    """
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise IntelError(f"cannot read key file {path}: {exc.strerror}") from exc
    check_key(key)
    return key


def check_key(key: bytes) -> None:
    """Raise :class:`IntelError` unless ``key`` is bytes of at least ``MIN_KEY_BYTES``."""
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise IntelError(
            f"the sharing key must be at least {MIN_KEY_BYTES} bytes "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))' > group.key`)"
        )


def key_id(key: bytes) -> str:
    """Public, non-reversible id of a key, so members can check they hash with the same key."""
    return "sha256:" + hashlib.sha256(b"distillguard-key-id\x00" + key).hexdigest()[:16]


def normalize_identifier(value: str, kind: str = "account") -> str:
    """Canonical form hashed for an identifier: stripped; emails also lower-cased."""
    text = str(value).strip()
    if kind == "email" or (kind == "account" and EMAIL_RE.fullmatch(text)):
        text = text.lower()
    return text


def hmac_id(key: bytes, value: str, kind: str = "account") -> str:
    """``hmac-sha256:<hex>`` of the normalised identifier under the group key."""
    digest = hmac.new(key, normalize_identifier(value, kind).encode("utf-8"), hashlib.sha256)
    return HMAC_PREFIX + digest.hexdigest()


def is_hmac(value: object) -> bool:
    """True for a well-formed ``hmac-sha256:<64 hex>`` string."""
    return isinstance(value, str) and bool(_HMAC_RE.match(value))


# --- prompt templates -------------------------------------------------------------------

_SKELETON_SUBS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"```.*?```", re.S), " <code> "),
    (re.compile(r"https?://\S+"), " <url> "),
    (EMAIL_RE, " <email> "),
    (re.compile(r"\"[^\"]{1,400}\"|'[^']{1,400}'|“[^”]{1,400}”"), " <str> "),
    (re.compile(r"\b[0-9a-f]{8,}\b", re.I), " <hex> "),
    (re.compile(r"[-+]?\d+(?:[.,]\d+)*"), " <num> "),
)


def skeletonize(prompt: str) -> str:
    """Fallback prompt skeleton: variable parts (code, urls, quotes, numbers) to placeholders.

    Used only when the ``signals`` table (whose ``skeleton`` column is authoritative) is
    absent. Lower-cased, whitespace collapsed.
    """
    text = prompt or ""
    for pattern, repl in _SKELETON_SUBS:
        text = pattern.sub(repl, text)
    return " ".join(text.lower().split())


def shingles(skeleton: str, n: int = 3) -> list[str]:
    """Word n-shingles of a skeleton (lower-cased, whitespace-split); short texts → 1 shingle."""
    words = skeleton.lower().split()
    if not words:
        return []
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _minhash_digest(skeleton: str) -> list[int]:
    from rensa import RMinHash

    mh = RMinHash(num_perm=MINHASH_NUM_PERM, seed=MINHASH_SEED)
    mh.update(shingles(skeleton) or [""])
    return [int(v) for v in mh.digest()]


def template_signature(skeleton: str) -> str:
    """``rminhash:128:42:<1024 hex>``: the MinHash signature of a skeleton, text-free."""
    digest = _minhash_digest(skeleton)
    body = b"".join(int(v & 0xFFFFFFFF).to_bytes(4, "big") for v in digest).hex()
    return f"{SIGNATURE_PREFIX}:{MINHASH_NUM_PERM}:{MINHASH_SEED}:{body}"


def parse_signature(signature: str) -> np.ndarray:
    """Signature string → uint32 array; :class:`IntelError` if malformed or foreign params."""
    try:
        prefix, num_perm, seed, body = signature.split(":")
        values = np.frombuffer(bytes.fromhex(body), dtype=">u4").astype(np.uint32)
    except (ValueError, AttributeError) as exc:
        raise IntelError(f"malformed template signature: {str(signature)[:40]}...") from exc
    if (prefix, int(num_perm), int(seed)) != (SIGNATURE_PREFIX, MINHASH_NUM_PERM, MINHASH_SEED):
        raise IntelError(
            f"template signature uses {prefix}:{num_perm}:{seed}, expected "
            f"{SIGNATURE_PREFIX}:{MINHASH_NUM_PERM}:{MINHASH_SEED}"
        )
    if len(values) != MINHASH_NUM_PERM:
        raise IntelError("template signature has the wrong length")
    return values


def signature_jaccard(a: str | np.ndarray, b: str | np.ndarray) -> float:
    """Jaccard estimate from two signatures: the share of equal MinHash slots."""
    va = parse_signature(a) if isinstance(a, str) else a
    vb = parse_signature(b) if isinstance(b, str) else b
    return float(np.mean(va == vb))


# --- scrubbing --------------------------------------------------------------------------


def scrub_user_agent(user_agent: str) -> str:
    """A user agent as shared: emails inside it (``contact: a@b.c``) replaced by ``<email>``.

    Matching applies the same function to local user agents, so scrubbed values still match.
    """
    return EMAIL_RE.sub("<email>", user_agent.strip())


def redact(text: str, secrets: Iterable[str], key: bytes) -> str:
    """Replace each raw identifier (and any email) in ``text`` by its short HMAC tag."""
    out = str(text)
    for raw in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        if raw in out:
            out = out.replace(raw, "[" + hmac_id(key, raw)[len(HMAC_PREFIX) :][:12] + "]")
    return EMAIL_RE.sub(lambda m: "[" + hmac_id(key, m.group(0), "email")[12:24] + "]", out)


# --- Bloom filter -----------------------------------------------------------------------


class BloomFilter:
    """A small deterministic Bloom filter over strings (pure Python, SHA-256 based).

    Bit positions of an item are ``int(sha256(i || item)) mod m`` for ``i < k``, so any
    implementation can rebuild or query a shared filter; ``rbloom`` is not used because its
    default hash is per-process random and would need a custom hash to serialise anyway.

    >>> bf = BloomFilter.for_capacity(10)
    >>> bf.add("hmac-sha256:00"); "hmac-sha256:00" in bf
    True
    """

    def __init__(self, m: int, k: int, bits: bytearray | None = None, n: int = 0) -> None:
        if m <= 0 or k <= 0:
            raise IntelError("Bloom filter needs m > 0 and k > 0")
        self.m, self.k, self.n = m, k, n
        self.bits = bits if bits is not None else bytearray((m + 7) // 8)

    @classmethod
    def for_capacity(cls, n: int, fp_rate: float = 1e-6) -> BloomFilter:
        """Size for ``n`` items at false-positive rate ``fp_rate`` (default one in a million)."""
        n = max(int(n), 1)
        m = max(8, math.ceil(-n * math.log(fp_rate) / math.log(2) ** 2))
        k = max(1, round(m / n * math.log(2)))
        return cls(m, k)

    def _positions(self, item: str) -> Sequence[int]:
        data = item.encode("utf-8")
        return [
            int.from_bytes(hashlib.sha256(i.to_bytes(4, "big") + data).digest()[:8], "big")
            % self.m
            for i in range(self.k)
        ]

    def add(self, item: str) -> None:
        for p in self._positions(item):
            self.bits[p // 8] |= 1 << (p % 8)
        self.n += 1

    def __contains__(self, item: str) -> bool:
        return all(self.bits[p // 8] & (1 << (p % 8)) for p in self._positions(item))

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form carried in the STIX extension (``identifier_bloom``)."""
        return {
            "scheme": "sha256-index-v1",
            "m": self.m,
            "k": self.k,
            "n": self.n,
            "bits": base64.b64encode(bytes(self.bits)).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> BloomFilter:
        if data.get("scheme") != "sha256-index-v1":
            raise IntelError(f"unknown Bloom filter scheme {data.get('scheme')!r}")
        m, k, n = int(data["m"]), int(data["k"]), int(data.get("n", 0))  # type: ignore[arg-type]
        bits = bytearray(base64.b64decode(str(data["bits"])))
        if len(bits) != (m + 7) // 8:
            raise IntelError("Bloom filter bits do not match m")
        return cls(m, k, bits, n)
