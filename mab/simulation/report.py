"""The simulation's report: a PNG with two panels, and its figures as JSON.

Left: cumulative regret over the steps, one line per setting. Right: for
each setting evaluated offline on the logging setting's decisions, the IPS
and SNIPS estimates of the reward per decision with their intervals, and
the true value. matplotlib is imported here only (the ``evaluate`` extra).
"""

import numpy as np


def plot(path, run_result, checks, *, title=None):
    """Write the PNG report to ``path``. ``checks``: ``run.check_estimates``'s list (may be empty)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    steps = np.arange(1, run_result.steps + 1)
    for setting in run_result.settings:
        left.plot(steps, np.cumsum(run_result.regret[setting.name]), label=_label(setting))
    left.set_xlabel("step")
    left.set_ylabel("cumulative regret (expected clicks)")
    left.set_title("regret over time")
    left.legend(fontsize="small")
    left.grid(alpha=0.3)

    if checks:
        x = np.arange(len(checks))
        for offset, name, marker in ((-0.12, "ips", "o"), (0.12, "snips", "s")):
            est = np.array([c[name]["per_decision"]["estimate"] for c in checks])
            low = np.array([c[name]["per_decision"]["low"] for c in checks])
            high = np.array([c[name]["per_decision"]["high"] for c in checks])
            right.errorbar(x + offset, est, yerr=[est - low, high - est], fmt=marker, capsize=4,
                           label=f"{name.upper()} ({round(100 * checks[0]['report']['result']['confidence'])}% CI)")
        right.scatter(x, [c["true"]["per_decision"] for c in checks], marker="*", s=160, color="black",
                      zorder=3, label="true value")
        right.set_xticks(x, [c["setting"] for c in checks])
        right.set_ylabel("reward per decision (all positions)")
        logger = run_result.settings[0].name
        right.set_title(f"offline estimates on {logger!r}'s logged decisions")
        right.legend(fontsize="small")
        right.grid(alpha=0.3)
    else:
        right.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(setting):
    text = f"{setting.name}: Beta({setting.prior_alpha:g}, {setting.prior_beta:g})"
    if setting.half_life_seconds is not None:
        text += f", half-life {setting.half_life_seconds:g} s"
    return text


def summary(run_result, checks):
    """The figures of a run as a JSON-ready dict."""
    from mab.simulation.environment import loglog_slope, regret_halves

    settings = {}
    for setting in run_result.settings:
        regret = run_result.regret[setting.name]
        first, second = regret_halves(regret)
        settings[setting.name] = {
            "prior_alpha": setting.prior_alpha, "prior_beta": setting.prior_beta,
            "half_life_seconds": setting.half_life_seconds,
            "cumulative_regret": float(regret.sum()),
            "regret_first_half": first, "regret_second_half": second,
            "loglog_slope": loglog_slope(regret),
        }
    return {
        "steps": run_result.steps,
        "events": run_result.events,
        "settings": settings,
        "estimates": [{k: v for k, v in c.items() if k != "report"} for c in checks],
    }
