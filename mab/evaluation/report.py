"""``mab evaluate``'s report: a text table for people, JSON for programs."""

import math

import orjson

from mab.evaluation.estimators import Interval


def _plain(value):
    if isinstance(value, Interval):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):        # numpy scalars and arrays
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None                     # JSON has no NaN
    return value


def as_json(report):
    """The report as JSON text (NaN as null), without the per-decision details."""
    body = {k: v for k, v in report.items() if k != "details"}
    return orjson.dumps(_plain(body), option=orjson.OPT_INDENT_2).decode()


def _ci(interval):
    if not math.isfinite(interval.estimate):
        return "n/a"
    return f"{interval.estimate:.5f} [{interval.low:.5f}, {interval.high:.5f}]"


def format_table(report):
    """The report as text: what was read, the draws, the overlap, and the
    estimates by position and over the first k positions."""
    c = report["candidate"]
    i = report["input"]
    d = report["draws"]
    o = report["overlap"]
    r = report["result"]
    e = r["estimates"]
    K = i["positions"]
    half_life = "no decay" if c["half_life_seconds"] is None else f"half-life {c['half_life_seconds']:g} s"
    pct = round(100 * r["confidence"])
    lines = [
        f"candidate: model {c['model']!r}, prior Beta({c['prior_alpha']:g}, {c['prior_beta']:g}), {half_life}"
        + (f" ({c['source']})" if c["source"] else ""),
        f"log: {i['decisions']:,} decisions of model {i['model']!r} in {i['log_files']} file(s), "
        f"{K} position(s); rewards: {i['reward_events']:,} events in {i['reward_files']} file(s), "
        f"{i['reward_events_matched']:,} on shown positions, {i['reward_events_other_decisions']:,} for "
        f"decisions not evaluated (another model's or not logged), {i['reward_events_not_shown']:,} for "
        f"items not shown in the first {K}",
        f"draws: {d['hits']} hit(s) per position (inverse propensity within {d['target_relative_se']:g} "
        f"relative standard error), {d['min_draws']} to {d['max_draws']} rankings per policy; "
        f"mean {d['mean_draws_per_policy']:.1f}, most {d['most_draws']}; "
        f"{d['mean_variates_per_draw']['logging']:.1f} Beta variates per ranking; "
        f"{d['decisions_unchanged']:,} decision(s) unchanged by the candidate (weight 1); seed {d['seed']}",
        f"overlap: {o['decisions_excluded']:,} decision(s) with too little overlap left out (candidate puts more "
        f"than {o['max_unsupported']:g} of its slots on items out of the logging policy's reach), "
        f"{o['decisions_kept']:,} evaluated; {o['unestimable_positions']:,} logged position(s) in "
        f"{o['decisions_with_unestimable_position']:,} decision(s) with logging propensity below about "
        f"{d['min_propensity']:g} (weight 0)",
        "",
        f"per position (estimate [{pct}% interval]); mean weight 1 means full support, less is candidate mass "
        "the log cannot show",
        f"{'k':>3}  {'logged':>9}  {'IPS':<29}  {'SNIPS':<29}  {'mean weight':<29}  {'eff. n':>9}",
    ]
    for k in range(K):
        lines.append(
            f"{k + 1:>3}  {e['logged']['position'][k].estimate:>9.5f}  {_ci(e['ips']['position'][k]):<29}  "
            f"{_ci(e['snips']['position'][k]):<29}  {_ci(r['mean_weight'][k]):<29}  "
            f"{r['effective_decisions'][k]:>9.0f}")
    lines += [
        "",
        "reward per decision over the first k positions (k = 1: top-1; the last row: per decision)",
        f"{'k':>3}  {'logged':>9}  {'IPS':<29}  {'SNIPS':<29}",
    ]
    for k in range(K):
        lines.append(f"{k + 1:>3}  {e['logged']['first_k'][k].estimate:>9.5f}  {_ci(e['ips']['first_k'][k]):<29}  "
                     f"{_ci(e['snips']['first_k'][k]):<29}")
    for note in report.get("warnings", []):
        lines.append(f"warning: {note}")
    lines.append(f"({report['seconds']:.1f} s)")
    return "\n".join(lines)
