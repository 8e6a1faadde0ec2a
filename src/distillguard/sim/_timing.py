"""Request timing: human sessions, machine streams, campaign-wide load balancing.

Three processes cover every population:

* **human** — per-account sessions placed by a diurnal curve in the account's local time
  zone, fewer on weekends, each session a few conversations of a few turns separated by
  think/read gaps. This is what ordinary users, students and low-and-slow campaigns look like.
* **machine** — a stream whose inter-arrival gaps are block-bootstrapped from a real
  production trace (Azure LLM inference traces, if given) and rescaled to the wanted rate, so
  burstiness is realistic rather than Poisson. Without a trace a gamma process with a
  heavy-tailed shape stands in.
* **load-balanced** — one machine stream per campaign, dealt out to whichever of the
  campaign's accounts are active: every account then shows the same on/off pattern at the
  same moments, which is the "synchronized timing" reported for hydra clusters.

All functions are vectorised; they return epoch seconds as float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillguard.errors import DistillguardError

__all__ = [
    "DIURNAL",
    "TimingTrace",
    "grouped_cumsum",
    "human_sessions",
    "load_timing",
    "machine_stream",
]

DAY = 86400.0

#: Relative activity by local hour for a human user (sleep 1–7h, peaks late morning/evening).
DIURNAL = np.array([
    0.30, 0.15, 0.08, 0.05, 0.04, 0.05, 0.12, 0.35, 0.70, 0.95, 1.00, 1.00,
    0.90, 0.95, 1.00, 0.95, 0.90, 0.85, 0.80, 0.85, 0.90, 0.85, 0.70, 0.50,
])


@dataclass(frozen=True)
class TimingTrace:
    """Inter-arrival gaps and token counts taken from real production traces.

    Attributes
    ----------
    gaps : ndarray (n,)
        Consecutive inter-arrival times in seconds, in trace order (order kept so a block
        bootstrap preserves bursts).
    out_tokens_chat, out_tokens_code : ndarray
        ``GeneratedTokens`` of the conversation and code traces (either may be empty).
    """

    gaps: np.ndarray
    out_tokens_chat: np.ndarray
    out_tokens_code: np.ndarray


def _read_trace_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import polars as pl

    df = pl.read_csv(path)
    need = {"TIMESTAMP", "GeneratedTokens"}
    if not need <= set(df.columns):
        raise DistillguardError(f"{path}: not an Azure LLM trace (need columns {sorted(need)})")
    ts = (df["TIMESTAMP"].str.slice(0, 26).str.to_datetime("%Y-%m-%d %H:%M:%S%.f")
          .cast(pl.Int64).to_numpy() / 1e6)
    order = np.argsort(ts, kind="stable")
    gaps = np.diff(ts[order])
    return gaps[gaps >= 0], df["GeneratedTokens"].to_numpy()[order].astype(np.int64)


def load_timing(path: str | Path | list[str | Path]) -> TimingTrace:
    """Load Azure LLM inference trace CSVs (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    ``path`` may be a CSV file, a directory of them, or a list. Files whose name contains
    ``code`` feed code-completion token counts, the rest conversational ones.
    """
    paths: list[Path] = []
    for p in path if isinstance(path, list) else [path]:
        p = Path(p)
        paths.extend(sorted(p.glob("*.csv")) if p.is_dir() else [p])
    if not paths:
        raise DistillguardError(f"no trace CSV files under {path}")
    gaps, chat, code = [], [], []
    for p in paths:
        g, tok = _read_trace_csv(p)
        gaps.append(g)
        (code if "code" in p.name.lower() else chat).append(tok)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return TimingTrace(np.concatenate(gaps), cat(chat), cat(code))


def grouped_cumsum(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``x`` restarting at each group (groups are consecutive runs)."""
    if len(x) == 0:
        return x.astype(float)
    c = np.cumsum(x)
    starts = np.cumsum(counts) - counts
    base = np.repeat(c[starts[counts > 0]] - x[starts[counts > 0]], counts[counts > 0])
    return c - base


def human_sessions(
    rng: np.random.Generator,
    sessions_per_day: np.ndarray,
    tz_hours: np.ndarray,
    t0: float,
    days: float,
    *,
    weekend_factor: float = 0.55,
    diurnal: np.ndarray = DIURNAL,
    active_from: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Session start times for human accounts.

    Parameters
    ----------
    sessions_per_day : ndarray (n_accounts,)
        Mean sessions per weekday for each account.
    tz_hours : ndarray (n_accounts,)
        UTC offset of each account; sessions follow ``diurnal`` in local time.
    t0 : float
        Epoch seconds of the simulation start (a UTC midnight).
    active_from : ndarray (n_accounts,), optional
        Epoch seconds before which an account sends nothing (e.g. created mid-window).

    Returns
    -------
    account_index, start_ts : ndarray (n_sessions,)
    """
    n = len(sessions_per_day)
    nd = int(np.ceil(days)) + 1
    # local day index d covers local [d, d+1); weekday of the UTC start date + d
    wd0 = int(((t0 // DAY) + 3) % 7)  # 1970-01-01 was a Thursday (=3, Monday=0)
    weekday = (wd0 + np.arange(-1, nd - 1)) % 7
    mult = np.where(weekday >= 5, weekend_factor, 1.0)
    lam = sessions_per_day[:, None] * mult[None, :]
    counts = rng.poisson(lam)
    acct = np.repeat(np.repeat(np.arange(n), nd), counts.ravel())
    dayi = np.repeat(np.tile(np.arange(-1, nd - 1), n), counts.ravel())
    m = len(acct)
    # per-account chronotype shift of +-2h keeps accounts in one zone from being identical
    shift = rng.normal(0, 1.0, size=n)
    p = diurnal / diurnal.sum()
    hour = rng.choice(24, size=m, p=p) + rng.random(m)
    local = dayi * DAY + (hour + shift[acct]) * 3600.0
    ts = t0 + local - tz_hours[acct] * 3600.0
    keep = (ts >= t0) & (ts < t0 + days * DAY)
    if active_from is not None:
        keep &= ts >= active_from[acct]
    return acct[keep], ts[keep]


def machine_stream(
    rng: np.random.Generator,
    rate_per_day: float,
    t_start: float,
    t_end: float,
    trace: TimingTrace | None = None,
    *,
    block: int = 64,
) -> np.ndarray:
    """Arrival times of an automated client sending ``rate_per_day`` on average.

    With a trace, gaps are drawn as contiguous blocks of real inter-arrival times and scaled
    so their mean matches the target rate (shape of bursts kept, level set by the knob).
    """
    if rate_per_day <= 0 or t_end <= t_start:
        return np.zeros(0)
    mean_gap = DAY / rate_per_day
    n = int((t_end - t_start) / mean_gap * 1.3) + 16
    if trace is not None and len(trace.gaps) > block:
        nb = -(-n // block)
        starts = rng.integers(0, len(trace.gaps) - block, size=nb)
        idx = (starts[:, None] + np.arange(block)[None, :]).ravel()[:n]
        g = trace.gaps[idx]
        g = g / max(trace.gaps.mean(), 1e-9) * mean_gap
    else:
        shape = 0.35  # CV ~1.7: bursty like real API clients
        g = rng.gamma(shape, mean_gap / shape, size=n)
    ts = t_start + rng.random() * mean_gap + np.cumsum(g)
    while ts[-1] < t_end:  # rare: short sample; extend
        more = rng.gamma(0.35, mean_gap / 0.35, size=n)
        ts = np.concatenate([ts, ts[-1] + np.cumsum(more)])
    return ts[ts < t_end]


def daily_window_mask(ts: np.ndarray, start_hour: float, hours: float,
                      tz_hours: float = 0.0) -> np.ndarray:
    """True where ``ts`` falls in a daily window of ``hours`` from ``start_hour`` local."""
    h = ((ts / 3600.0 + tz_hours) - start_hour) % 24.0
    return h < hours


def diurnal_thin(rng: np.random.Generator, ts: np.ndarray, tz_hours: float | np.ndarray,
                 floor: float = 0.15, diurnal: np.ndarray = DIURNAL) -> np.ndarray:
    """Boolean keep-mask making a flat stream follow an aggregate human day/night curve."""
    h = (np.floor(ts / 3600.0 + tz_hours) % 24).astype(int)
    w = floor + (1 - floor) * diurnal[h] / diurnal.max()
    return rng.random(len(ts)) < w
