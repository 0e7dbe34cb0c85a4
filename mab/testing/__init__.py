"""Helpers for testing mab and for running it without cloud accounts.

Nothing here is imported by the service itself; ``vertex_standin`` needs the
Google client libraries and is imported only by whoever uses it.
"""
