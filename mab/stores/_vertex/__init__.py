"""What the two Vertex AI Feature Store backends share, and the parts of the
``vertex`` backend that are modules of their own.

- ``settings.py``: the settings of a ``[stores.NAME]`` table;
- ``store.py``: the fetch machinery (pool, deadlines, retries, value checks);
- ``cache.py``: the per-worker stale-while-revalidate cache (on the compiled
  table of ``mab/stores/_cache.pyx``);
- ``outcomes.py``: MISSING and FAILED, and the backends' own errors;
- ``shared_stream.py``: the ``vertex`` backend's long-lived stream, shared by
  a worker's request threads;
- ``answers.py``: how the ``vertex`` backend reads a feature view's answers
  (its per-key loops compiled in ``_answers.pyx``).
"""

from mab.stores._vertex.cache import FeatureCache
from mab.stores._vertex.outcomes import FAILED, MISSING, DeadlineReached, UnexpectedAnswer
from mab.stores._vertex.settings import MAX_CHUNK_SIZE, VertexSettings
from mab.stores._vertex.store import MIN_ATTEMPT_SECONDS, VertexStore, timeout_until

__all__ = [
    "FAILED", "MAX_CHUNK_SIZE", "MIN_ATTEMPT_SECONDS", "MISSING", "DeadlineReached", "FeatureCache",
    "UnexpectedAnswer", "VertexSettings", "VertexStore", "timeout_until",
]
