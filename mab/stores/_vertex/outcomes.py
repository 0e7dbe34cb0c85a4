"""What became of one entity's fetch, besides its values (a tuple of floats)."""


class _Outcome:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


#: The store does not hold the entity: scored from the prior.
MISSING = _Outcome("MISSING")
#: No usable answer by the deadline: the model's on_store_error decides.
FAILED = _Outcome("FAILED")


class DeadlineReached(Exception):
    """The fetch's deadline passed before an attempt could start."""


class UnexpectedAnswer(Exception):
    """The service answered something the backend cannot read."""
