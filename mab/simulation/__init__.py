"""``mab simulate``: a world with known click rates driving the real service.

``environment`` (click rates, drift, regret), ``client`` (/predict and
/feedback over HTTP), ``server`` (starting the service with a configuration
for the simulation), ``run`` (the loop, and the offline check of ``mab
evaluate`` against the true values), ``report`` (the PNG and JSON).
"""
