"""The load of a benchmark: request bodies, and wrk driving them at a server.

wrk (a C load generator, Debian's package) runs pinned to the load cores
with a Lua script that rotates through prepared bodies and prints one
machine-readable summary line; each step reads the server's CPU time from
/proc before and after.
"""

import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mab.bench.systems import CLK_TCK

WRK_SCRIPT = r"""
-- Rotates through prepared bodies (one JSON document per line) and prints
-- one machine-readable summary line at the end.
local bodies = {}
for line in io.lines(os.getenv("MAB_BENCH_BODIES")) do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json"}
local i = 0
-- Paced steps: after every response a connection waits a random time with
-- this mean (exponentially distributed), so the connections together send
-- requests at random instants, near connections / mean per second. Without
-- the randomness the connections fall into step and arrive in bursts.
local pause = tonumber(os.getenv("MAB_BENCH_DELAY_MS") or "0")
if pause > 0 then
  math.randomseed(tonumber(os.getenv("MAB_BENCH_SEED") or "1"))
  delay = function() return -math.log(1 - math.random()) * pause end
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("MABSTATS %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# wrk's script for mab.testing.rollout: rotate through the prepared bodies
# (paced as WRK_SCRIPT's), count the answers by status, those that close
# the connection and the 503s of admission control, and print one summary
# line (WrkCounts.parse). The per-thread counters reach done() through
# setup() and thread:get().
COUNTING_WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("MAB_BENCH_BODIES")) do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json"}
-- Paced as in WRK_SCRIPT: between requests a connection sits idle.
local pause = tonumber(os.getenv("MAB_BENCH_DELAY_MS") or "0")
if pause > 0 then
  math.randomseed(tonumber(os.getenv("MAB_BENCH_SEED") or "1"))
  delay = function() return -math.log(1 - math.random()) * pause end
end
local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
init = function(args) statuses = {}; closes = 0; shed = 0; i = 0 end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[i])
end
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local connection = headers["Connection"] or headers["connection"]
  if connection and connection:lower() == "close" then closes = closes + 1 end
  if status == 503 and body:find('"overloaded"', 1, true) then shed = shed + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  local all, closed, turned_away = {}, 0, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do all[code] = (all[code] or 0) + n end
    closed = closed + thread:get("closes")
    turned_away = turned_away + thread:get("shed")
  end
  io.write(string.format("MABROLLOUT requests=%d duration_us=%d connect=%d read=%d write=%d timeout=%d "
    .. "non_2xx=%d closes=%d shed=%d p50_us=%d p99_us=%d max_us=%d",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status, closed, turned_away,
    latency:percentile(50), latency:percentile(99), latency.max))
  for code, n in pairs(all) do io.write(string.format(" http_%d=%d", code, n)) end
  io.write("\n")
end
"""


def ensure_wrk():
    """Install wrk from Debian's packages unless it is on PATH (needs root)."""
    if subprocess.run(["which", "wrk"], capture_output=True).returncode == 0:
        return
    print("installing wrk from Debian's packages ...", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)


def read_ids(path, limit=None):
    """The ids (first column) of a CSV file with a header, at most ``limit``."""
    ids = []
    with open(path) as f:
        next(f)
        for line in f:
            ids.append(line.split(",", 1)[0])
            if limit and len(ids) >= limit:
                break
    return ids


def zipf_weights(n, exponent):
    """P(rank r) proportional to 1 / r**exponent, r = 1..n (a Zipf law over n items)."""
    return [1.0 / rank**exponent for rank in range(1, n + 1)]


def write_bodies(path, ids, n_ids, count, seed, zipf=None):
    """`count` request bodies of `n_ids` ids drawn from the data set, one per
    line: distinct uniform draws, or with `zipf` (an exponent) draws with
    replacement from a Zipf law over the ids in a random order of popularity."""
    rng = random.Random(seed)
    if zipf:
        ranked = list(ids)
        rng.shuffle(ranked)
        cumulative = list(itertools.accumulate(zipf_weights(len(ranked), zipf)))
    with open(path, "w") as f:
        for _ in range(count):
            if zipf:
                chosen = rng.choices(ranked, cum_weights=cumulative, k=n_ids)
            else:
                chosen = rng.sample(ids, n_ids) if n_ids <= len(ids) else rng.choices(ids, k=n_ids)
            f.write(json.dumps({"user_id": "u1", "item_ids": chosen}, separators=(",", ":")) + "\n")


@dataclass
class Step:
    system: str
    connections: int
    round: int
    requests: int
    seconds: float
    requests_per_s: float
    predictions_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non_2xx: int
    cpu_utilisation: float | None = None
    cpu_us_per_request: float | None = None
    cpu_us_per_request_by_worker: dict = field(default_factory=dict)
    # For paced steps: the fraction of this round's peak rate that was
    # offered, and the fraction served.
    paced_fraction: float | None = None
    achieved_fraction: float | None = None


def run_wrk(server, args, connections, duration, bodies_path, script_path, target_rate=None):
    """One step of load; with `target_rate` (req/s) each connection is paced
    to offer about that rate in total."""
    command = [
        "taskset", "-c", args.load_cores, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--timeout", "10s", "-s", script_path, server.url + "/predict",
    ]
    env = dict(os.environ, MAB_BENCH_BODIES=bodies_path)
    if target_rate:
        # wrk truncates delay() to whole milliseconds; long means (many
        # connections) keep that small.
        env["MAB_BENCH_DELAY_MS"] = str(connections / target_rate * 1000)
    before = server.cpu_snapshot()
    started = time.monotonic()
    output = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    wall = time.monotonic() - started
    after = server.cpu_snapshot()
    line = next((l for l in output.stdout.splitlines() if l.startswith("MABSTATS")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output.stdout}\n{output.stderr}")
    values = line.split()[1:]
    requests, duration_us, connect, read, write, status, timeout = map(int, values[:7])
    p50, p90, p99, worst = (float(v) / 1000.0 for v in values[7:])
    seconds = duration_us / 1e6
    step = Step(
        system=server.name, connections=connections, round=0, requests=requests, seconds=seconds,
        requests_per_s=requests / seconds, predictions_per_s=requests * args.ids / seconds,
        p50_ms=p50, p90_ms=p90, p99_ms=p99, max_ms=worst,
        errors=connect + read + write + timeout, non_2xx=status,
    )
    if before is not None and requests:
        total = sum(after.values()) - sum(before.get(pid, 0) for pid in after)
        step.cpu_utilisation = total / CLK_TCK / wall
        step.cpu_us_per_request = total / CLK_TCK / requests * 1e6
        master = server.process.pid
        for pid, ticks in after.items():
            if pid != master:
                step.cpu_us_per_request_by_worker[str(pid)] = (ticks - before.get(pid, 0)) / CLK_TCK / requests * 1e6
    return step


class DemoIds(Sequence):
    """The ids of ``mab.demo.write_items``'s rows, ``item-000000`` ...,
    without holding them: a sequence of ``n`` str for ``random.sample``."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return f"item-{i:06d}"


@dataclass
class WrkCounts:
    """What COUNTING_WRK_SCRIPT printed: requests completed, wrk's error
    counts, the answers by status, those with ``Connection: close`` and the
    503s of admission control (``shed``), latency in ms."""

    requests: int = 0
    seconds: float = 0.0
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    non_2xx: int = 0
    closes: int = 0
    shed: int = 0                       # of the non-2xx: 503 "overloaded" (admission control)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    statuses: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, output):
        """The summary line wrk's script printed; RuntimeError if none."""
        line = next((l for l in output.splitlines() if l.startswith("MABROLLOUT ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary:\n{output}")
        values = dict(item.split("=", 1) for item in line.split()[1:])
        load = cls(statuses={int(k[5:]): int(v) for k, v in values.items() if k.startswith("http_")})
        for name in ("requests", "connect", "read", "write", "timeout", "non_2xx", "closes", "shed"):
            setattr(load, name, int(values[name]))
        load.seconds = int(values["duration_us"]) / 1e6
        load.p50_ms, load.p99_ms, load.max_ms = (int(values[k]) / 1000 for k in ("p50_us", "p99_us", "max_us"))
        return load
