"""HTTP/1.1 serving for mab: a gunicorn worker class over httptools (llhttp).

- ``mab.http.protocol``: one connection's HTTP/1.1 without I/O: bytes in,
  requests out, responses in, bytes and a close decision out. Parsing
  (llhttp through httptools), message framing, limits,
  ``Expect: 100-continue`` and the order of responses on the wire.
- ``mab.http.request``: the parsed request, its limits, its target.
- ``mab.http.response``: responses as bytes, and the server's JSON errors.
- ``mab.http.wsgi``: a request to a WSGI environ and the application's
  answer to a status, headers and body.
- ``mab.http.worker``: ``HttptoolsWorker``, the gunicorn worker: an epoll
  loop over the listening sockets and keep-alive connections, timeouts,
  admission control, and what gunicorn does around a worker.

``mab.worker.HttptoolsWorker`` remains the class path given to gunicorn.
"""
