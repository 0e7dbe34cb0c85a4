"""The domain's errors. None of them knows about HTTP: the web layer maps
them to status codes in one table (``mab.web.ERROR_STATUS``)."""


class WouldWait(Exception):
    """A call asked not to wait (``wait=False``: a remote store's fetch, on
    the worker's loop thread) would have to, on the network; nothing was
    done or counted, and the caller runs it again where it may wait. Not a
    MabError: it never becomes an answer."""


class MabError(Exception):
    """Base class. ``code`` is a stable, machine-readable name for clients."""

    code = "error"

    def __init__(self, message, *, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(MabError):
    """The configuration is invalid; the service must not start."""

    code = "config_error"


class DataError(MabError):
    """A store's data is invalid (the message names the row)."""

    code = "data_error"


# -- errors of one request ---------------------------------------------------


class RequestError(MabError):
    """The client sent something the service cannot act on."""


class MalformedRequest(RequestError):
    """Not valid JSON, or a field of the wrong type."""

    code = "malformed_request"


class InvalidRequest(RequestError):
    """Well-formed, but a value is out of its domain or a field is unknown."""

    code = "invalid_request"


class TooManyItems(RequestError):
    code = "too_many_items"


class UnknownModel(RequestError):
    code = "unknown_model"


# -- the service cannot answer right now -------------------------------------


class Unavailable(MabError):
    """Temporarily unable to answer; ``retry_after`` is in seconds."""

    code = "unavailable"

    def __init__(self, message, *, code=None, retry_after=1):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class NotReady(Unavailable):
    """The worker has not finished loading its models and stores."""

    code = "not_ready"


class StoreUnavailable(Unavailable):
    """Features could not be fetched and the model's policy is to fail."""

    code = "store_unavailable"
