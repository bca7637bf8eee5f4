"""ServeGen client pools: per-client, per-10-minute arrival statistics with per-6-hour length
PMFs for five anonymised production models (see the traces README).

A pool's tarball is unpacked once into the cache folder (never next to the traces). Requests
are synthesised per client and window: arrivals follow the client's fitted inter-arrival
distribution (Gamma or Weibull, scipy's shape/scale convention) and lengths are drawn from the
client's PMFs for the matching 6-hour window. Clients without PMF files draw from the mixture
of the pool's other clients in that window. For the multimodal pool the input length is the
text tokens only.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvfleet.workload.lengths import LengthDist
from kvfleet.workload.paths import cache_dir, traces_dir
from kvfleet.workload.spec import RequestSpec

log = logging.getLogger(__name__)

WINDOW_S = 600.0
LENGTH_WINDOW_S = 21600.0
POOLS = {
    "m-large": "language-m-large",
    "m-mid": "language-m-mid",
    "m-small": "language-m-small",
    "deepseek-r1": "reason-deepseek-r1",
    "mm-image": "multimodal-mm-image",
}
_INPUT_FIELDS = ("input_tokens", "text_tokens")


def resolve_pool_tarball(name: str) -> Path:
    """``m-large``, ``language/m-large``, ``language-m-large``, ``servegen:m-large`` or a path."""
    key = name.removeprefix("servegen:").strip()
    path = Path(key).expanduser()
    if path.suffixes[-2:] == [".tar", ".gz"] and path.is_file():
        return path
    stem = key.replace("/", "-").removesuffix(".tar.gz")
    stem = POOLS.get(stem, POOLS.get(stem.split("-", 1)[-1], stem))
    candidate = traces_dir() / "servegen" / f"{stem}.tar.gz"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"ServeGen pool not found: {name} (known: {', '.join(POOLS)}; looked for {candidate})"
    )


def unpack_pool(tarball: Path) -> Path:
    """Unpack a pool tarball into the cache (once) and return its ``data/<cat>/<model>`` dir."""
    target = cache_dir() / "servegen" / tarball.name.removesuffix(".tar.gz")
    marker = target / ".complete"
    if not marker.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
        try:
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / ".complete").write_text(tarball.name + "\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("unpacked %s into %s", tarball, target)
    dirs = [p for p in (target / "data").glob("*/*") if p.is_dir()]
    if len(dirs) != 1:
        raise ValueError(f"{tarball}: expected one data/<category>/<model> folder, got {dirs}")
    return dirs[0]


def _empty(pmf: dict[float, float]) -> bool:
    return not pmf or sum(pmf.values()) <= 0


@dataclass(slots=True)
class Client:
    """One client of a pool: its 10-minute windows and (lazily read) length PMFs."""

    client_id: str
    window_s: np.ndarray
    rate: np.ndarray
    cv: np.ndarray
    pattern: tuple[str, ...]
    shape: np.ndarray
    scale: np.ndarray
    dataset_path: Path | None
    _lengths: dict[int, tuple[LengthDist, LengthDist]] | None = field(default=None, repr=False)
    _raw: dict[int, dict] | None = field(default=None, repr=False)  # type: ignore[type-arg]
    _parsed: dict[int, tuple[LengthDist, LengthDist] | None] = field(
        default_factory=dict, repr=False)

    def _windows(self) -> dict[int, dict]:  # type: ignore[type-arg]
        """The PMF file's fields per 6h window start, read once (parsed per window on use)."""
        if self._raw is None:
            self._raw = {}
            if self.dataset_path is not None:
                raw = json.loads(self.dataset_path.read_text())
                self._raw = {int(float(start)): fields for start, fields in raw.items()}
        return self._raw

    def _parse(self, start: int) -> tuple[LengthDist, LengthDist] | None:
        if start not in self._parsed:
            fields = self._windows().get(start)
            dists = None
            if fields is not None:
                in_key = next((k for k in _INPUT_FIELDS if k in fields), None)
                if in_key is not None and "output_tokens" in fields:
                    in_pmf = ast.literal_eval(fields[in_key])
                    out_pmf = ast.literal_eval(fields["output_tokens"])
                    if not (_empty(in_pmf) or _empty(out_pmf)):  # else: no requests then
                        dists = (LengthDist.from_pmf(in_pmf), LengthDist.from_pmf(out_pmf))
            self._parsed[start] = dists
        return self._parsed[start]

    def lengths(self) -> dict[int, tuple[LengthDist, LengthDist]]:
        """``{6h window start: (input dist, output dist)}``; empty without a PMF file."""
        if self._lengths is None:
            self._lengths = {
                start: d for start in sorted(self._windows()) if (d := self._parse(start))
            }
        return self._lengths

    def lengths_at(self, t_s: float) -> tuple[LengthDist, LengthDist] | None:
        """The length distributions of the 6-hour window holding ``t_s`` (only that window
        is parsed)."""
        return self._parse(int(t_s // LENGTH_WINDOW_S * LENGTH_WINDOW_S))


@dataclass(slots=True)
class Pool:
    name: str
    clients: list[Client]
    #: per 6-hour window: the length distributions of the clients that have PMFs then
    mixtures: dict[int, list[tuple[LengthDist, LengthDist]]] = field(default_factory=dict)

    @property
    def num_windows(self) -> int:
        return max((len(c.window_s) for c in self.clients), default=0)


def load_pool(name: str) -> Pool:
    """Read a pool's client traces (lengths are read on first use); a pool read before in
    this process is returned again, with the lengths it has parsed."""
    tarball = resolve_pool_tarball(name)
    pool = _POOLS.get(tarball)
    if pool is None:
        pool = _POOLS[tarball] = _read_pool(name, tarball)
    return pool


_POOLS: dict[Path, Pool] = {}


def _read_pool(name: str, tarball: Path) -> Pool:
    folder = unpack_pool(tarball)
    clients: list[Client] = []
    for trace in sorted(folder.glob("chunk-*-trace.csv"), key=_client_key):
        client_id = trace.name.removeprefix("chunk-").removesuffix("-trace.csv")
        win, rate, cv, shp, scl = [], [], [], [], []
        pats: list[str] = []
        for lineno, line in enumerate(trace.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            cols = line.split(",")
            try:
                win.append(float(cols[0]))
                rate.append(float(cols[1] or 0))
                cv.append(float(cols[2] or 0))
                pats.append(cols[3].strip())
                shp.append(float(cols[4] or 0))
                scl.append(float(cols[5] or 0))
            except (IndexError, ValueError) as exc:
                raise ValueError(f"{trace}:{lineno}: {exc}") from exc
        dataset = trace.with_name(f"chunk-{client_id}-dataset.json")
        clients.append(
            Client(
                client_id=client_id,
                window_s=np.asarray(win),
                rate=np.asarray(rate),
                cv=np.asarray(cv),
                pattern=tuple(pats),
                shape=np.asarray(shp),
                scale=np.asarray(scl),
                dataset_path=dataset if dataset.is_file() else None,
            )
        )
    if not clients:
        raise ValueError(f"ServeGen pool {name}: no client traces in {folder}")
    return Pool(name=folder.name, clients=clients)


def _client_key(path: Path) -> tuple[int, str]:
    stem = path.name.removeprefix("chunk-").removesuffix("-trace.csv")
    return (int(stem), stem) if stem.isdigit() else (1 << 30, stem)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Aggregate figures of a pool, as defined in the traces README."""

    num_windows: int
    mean_rate: float
    peak_rate: float
    mean_active_clients: float
    mean_input_tokens: float
    mean_output_tokens: float
    length_coverage: float


def pool_stats(pool: Pool) -> PoolStats:
    n = pool.num_windows
    agg = np.zeros(n)
    active = np.zeros(n)
    in_sum = out_sum = weight_sum = covered = 0.0
    for c in pool.clients:
        agg[: len(c.rate)] += c.rate
        active[: len(c.rate)] += c.rate > 0
        table = c.lengths()
        for w, r in zip(c.window_s, c.rate, strict=True):
            if r <= 0:
                continue
            dists = table.get(int(w // LENGTH_WINDOW_S * LENGTH_WINDOW_S))
            if dists is None:
                continue
            weight = r * WINDOW_S
            in_sum += weight * dists[0].mean
            out_sum += weight * dists[1].mean
            weight_sum += weight
            covered += weight
    total = float(agg.sum() * WINDOW_S)
    return PoolStats(
        num_windows=n,
        mean_rate=float(agg.mean()) if n else 0.0,
        peak_rate=float(agg.max()) if n else 0.0,
        mean_active_clients=float(active.mean()) if n else 0.0,
        mean_input_tokens=float(in_sum / weight_sum) if weight_sum else 0.0,
        mean_output_tokens=float(out_sum / weight_sum) if weight_sum else 0.0,
        length_coverage=float(covered / total) if total else 0.0,
    )


def _gaps(c: Client, i: int, scale: float, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` inter-arrival gaps for client ``c`` in window ``i``, at ``scale`` times its rate.

    The fitted family and shape set the burstiness; the gaps are rescaled so that their mean is
    ``1 / rate`` (the fits' own means are off by up to 2x for some windows).
    """
    pat, a, s = c.pattern[i], float(c.shape[i]), float(c.scale[i])
    mean_gap = 1.0 / (float(c.rate[i]) * scale)
    if pat == "Weibull" and a > 0 and s > 0:
        draws = rng.weibull(a, size=n)
        fitted_mean = math.gamma(1.0 + 1.0 / a)
    elif pat == "Gamma" and a > 0 and s > 0:
        draws = rng.gamma(a, 1.0, size=n)
        fitted_mean = a
    else:
        cv = float(c.cv[i]) if c.cv[i] > 0 else 1.0
        k = 1.0 / (cv * cv)
        draws = rng.gamma(k, 1.0, size=n)
        fitted_mean = k
    return draws * (mean_gap / fitted_mean)


def generate_pool(
    pool: Pool,
    start_s: float,
    duration_s: float,
    rng: np.random.Generator,
    rate_scale: float = 1.0,
    model: str | None = None,
) -> list[RequestSpec]:
    """Requests of every client over ``[start_s, start_s + duration_s)`` of the pool's time.

    ``rate_scale`` multiplies every client's rate (burstiness kept). Arrival times restart at 0
    at ``start_s``. ``model`` names the requests' model (default: the pool's name).
    """
    if duration_s <= 0 or rate_scale <= 0:
        raise ValueError("duration and rate_scale must be > 0")
    end_s = start_s + duration_s
    name = model or pool.name
    rows: list[tuple[float, str, int, int]] = []
    for c in pool.clients:
        for i, w in enumerate(c.window_s):
            lo, hi = max(w, start_s), min(w + WINDOW_S, end_s)
            if hi <= lo or c.rate[i] <= 0:
                continue
            times = _window_arrivals(c, i, lo, hi, rate_scale, rng)
            if not len(times):
                continue
            dists = c.lengths_at(lo) or _pool_mixture(pool, lo, rng)
            if dists is None:
                continue
            ins = dists[0].sample(rng, len(times))
            outs = dists[1].sample(rng, len(times))
            rows.extend(
                (float(t) - start_s, c.client_id, int(a), int(b))
                for t, a, b in zip(times, ins, outs, strict=True)
            )
    rows.sort(key=lambda r: r[0])
    return [
        RequestSpec(
            request_id=f"r{n}",
            arrival_s=t,
            model=name,
            input_tokens=a,
            output_tokens=b,
            client=client,
        )
        for n, (t, client, a, b) in enumerate(rows)
    ]


def _window_arrivals(
    c: Client, i: int, lo: float, hi: float, scale: float, rng: np.random.Generator
) -> np.ndarray:
    expected = float(c.rate[i]) * scale * (hi - lo)
    n = int(expected + 10 * np.sqrt(expected + 1) + 8)
    w = float(c.window_s[i])
    # The renewal process runs from the window start, so slices inside a window line up.
    t = w + rng.uniform() * _gaps(c, i, scale, rng, 1)[0]
    out: list[np.ndarray] = []
    while t < hi:
        chunk = t + np.concatenate(([0.0], np.cumsum(_gaps(c, i, scale, rng, n - 1))))
        out.append(chunk)
        t = float(chunk[-1]) + float(_gaps(c, i, scale, rng, 1)[0])
    if not out:
        return np.empty(0)
    times = np.concatenate(out)
    return times[(times >= lo) & (times < hi)]


def _pool_mixture(
    pool: Pool, t_s: float, rng: np.random.Generator
) -> tuple[LengthDist, LengthDist] | None:
    """Lengths of a random client that has PMFs for ``t_s`` (for clients without PMFs)."""
    key = int(t_s // LENGTH_WINDOW_S)
    have = pool.mixtures.get(key)
    if have is None:
        have = pool.mixtures[key] = [
            d for c in pool.clients if c.dataset_path is not None and (d := c.lengths_at(t_s))]
    if not have:
        return None
    return have[int(rng.integers(len(have)))]
