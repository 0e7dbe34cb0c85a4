"""mab: a Thompson-sampling bandit prediction service.

The sampler extension links libgomp. libgomp reads its wait policy once, when
it is loaded, and by default a thread that finishes a parallel region spins
for a while before sleeping; beside a second busy gunicorn worker that
spinning steals the other core and throughput collapses. So unless the user
chose otherwise, idle OpenMP threads sleep. It must be set here, before any
submodule loads the extension.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
