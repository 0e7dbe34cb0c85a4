"""The report of a benchmark: medians over rounds, a Markdown table, a chart."""

import statistics
import sys

def summarize(steps, systems, connections, paced=(), paced_connections=None):
    """Median over rounds of every figure, per (system, step)."""
    rows = []
    for c, fraction in [(c, None) for c in connections] + [(paced_connections, f) for f in paced]:
        base = None
        for system in systems:
            mine = [s for s in steps if s.system == system and s.connections == c and s.paced_fraction == fraction]
            if not mine:
                continue

            def med(key):
                values = [getattr(s, key) for s in mine if getattr(s, key) is not None]
                return statistics.median(values) if values else None

            row = {
                "system": system, "connections": c, "paced_fraction": fraction, "rounds": len(mine),
                **{k: med(k) for k in ("requests_per_s", "predictions_per_s", "p50_ms", "p90_ms", "p99_ms",
                                        "max_ms", "cpu_utilisation", "cpu_us_per_request", "achieved_fraction")},
                "errors": sum(s.errors for s in mine), "non_2xx": sum(s.non_2xx for s in mine),
                # Median per worker over the rounds (a worker recycled mid-run has fewer).
                "cpu_us_per_request_by_worker": {
                    pid: statistics.median(s.cpu_us_per_request_by_worker[pid] for s in mine
                                           if pid in s.cpu_us_per_request_by_worker)
                    for pid in dict.fromkeys(p for s in mine for p in s.cpu_us_per_request_by_worker)
                },
            }
            if base is None:
                base = mine
                row["rps_vs_first"] = 1.0
                row["cpu_vs_first"] = 1.0 if row["cpu_us_per_request"] else None
            else:
                # Ratios within each round, then the median: drift cancels.
                pairs = [(a, b) for a in base for b in mine if a.round == b.round]
                row["rps_vs_first"] = statistics.median(b.requests_per_s / a.requests_per_s for a, b in pairs)
                cpu_pairs = [(a, b) for a, b in pairs if a.cpu_us_per_request and b.cpu_us_per_request]
                row["cpu_vs_first"] = (
                    statistics.median(a.cpu_us_per_request / b.cpu_us_per_request for a, b in cpu_pairs)
                    if cpu_pairs else None
                )
            rows.append(row)
    return rows


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def print_workers(rows):
    """CPU per request of each worker, where a system has more than one."""
    lines = [
        f"- {r['system']}, {r['connections']} connections: "
        + ", ".join(f"worker {pid}: {us:.0f} us" for pid, us in r["cpu_us_per_request_by_worker"].items())
        for r in rows if len(r["cpu_us_per_request_by_worker"]) > 1
    ]
    if lines:
        print("\nServer CPU per request (of all requests) by worker:")
        print("\n".join(lines))


def print_table(rows, first):
    print(f"\n| system | connections | req/s | predictions/s | p50 ms | p90 ms | p99 ms | max ms | errors | "
          f"server CPU | CPU us/req | req/s vs {first} | CPU/req: {first} / system |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        step = str(r["connections"]) if r["paced_fraction"] is None else (
            f"{r['connections']}, paced to {r['paced_fraction']:.0%} of peak (served {r['achieved_fraction']:.0%})")
        print(
            f"| {r['system']} | {step} | {fmt(r['requests_per_s'], ',.0f')} "
            f"| {fmt(r['predictions_per_s'], ',.0f')} | {fmt(r['p50_ms'], '.2f')} | {fmt(r['p90_ms'], '.2f')} "
            f"| {fmt(r['p99_ms'], '.2f')} | {fmt(r['max_ms'], '.1f')} | {r['errors'] + r['non_2xx']} "
            f"| {fmt(r['cpu_utilisation'] and 100 * r['cpu_utilisation'], '.0f')}% "
            f"| {fmt(r['cpu_us_per_request'], '.0f')} | {fmt(r['rps_vs_first'], '.2f')}x "
            f"| {fmt(r['cpu_vs_first'], '.2f')}x |"
        )


def write_chart(rows, path, title):
    """Throughput against p99 latency, one line per system (points: concurrency steps)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["predictions_per_s"])
        xs = [r["predictions_per_s"] / 1e6 for r in mine]
        ys = [r["p99_ms"] for r in mine]
        ax.plot(xs, ys, marker="o", label=system)
        for r, x, y in zip(mine, xs, ys):
            label = str(r["connections"]) if r["paced_fraction"] is None else f"{r['paced_fraction']:.0%}"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("million predictions per second")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

