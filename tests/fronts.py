"""A misbehaving HTTP front between the S3 client and moto's server, for tests that need a lying server.

``Front(upstream)`` forwards every request to the real server (moto) and answers with what it
answered, unless a rule set by the test says otherwise. Each rule is a predicate on the request and
one behaviour:

- ``strip(header)``: drop a request header before forwarding (a server that ignores a condition);
- ``etag(rewrite)``: forward, then rewrite the ETag header of the answer (a proxy that changes etags,
  while If-Match still reaches the server unchanged);
- ``drop``: forward, let the server act, then close the connection without answering (an answer
  lost after the server acted);
- ``trickle(data, every)``: answer 200 with ``data``, one byte every ``every`` seconds;
- ``endless(chunk)``: answer 200 with a chunked body that never ends (until the client goes);
- ``hold(event)``: wait for ``event`` before forwarding (a slow transfer the test releases);
- ``before(fn)``: call ``fn(request)`` before forwarding (another writer acting at that moment);
- ``after(fn)``: forward, call ``fn(request)`` once the server acted, then answer (another writer
  acting right after, before the client hears back).

Rules fire ``times`` times (None: always). ``sent`` counts the body bytes the front made up itself.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str  # /bucket/key?query, as sent
    key: str  # bucket/key, unquoted, no query
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def is_probe(self) -> bool:
        return "/.persistkit-probe/" in self.key

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Rule:
    when: Callable[[Request], bool]
    kind: str
    arg: Any = None
    times: int | None = None
    fired: int = 0


@dataclass
class Front:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        front = self
        target = urlsplit(self.upstream)
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                request = Request(
                    self.command,
                    self.path,
                    unquote(split.path.lstrip("/")),
                    parse_qs(split.query, keep_blank_values=True),
                    dict(self.headers.items()),
                    body,
                )
                rule = front._match(request)
                kind = rule.kind if rule else "forward"
                with front._lock:
                    front.log.append(f"{kind} {self.command} {request.key} {split.query}")
                if kind == "trickle":
                    self._trickle(*rule.arg)
                    return
                if kind == "endless":
                    self._endless(rule.arg)
                    return
                if kind == "hold":
                    rule.arg.wait(120)
                if kind == "before":
                    rule.arg(request)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                if kind == "strip":
                    headers = {k: v for k, v in headers.items() if k.lower() != rule.arg.lower()}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                if kind == "after":
                    rule.arg(request)
                if kind == "drop":  # the server acted; its answer never arrives
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() in ("connection", "transfer-encoding") or (
                        key.lower() == "content-length" and self.command != "HEAD"
                    ):
                        continue
                    if key.lower() == "etag" and kind == "etag":
                        value = rule.arg(value)
                    self.send_header(key, value)
                if self.command != "HEAD":  # a HEAD's Content-Length is the object's, passed on above
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _trickle(self, data: bytes, every: float) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", '"trickle"')
                self.end_headers()
                try:
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        with front._lock:
                            front.sent += 1
                        time.sleep(every)
                except OSError:
                    pass
                self.close_connection = True

            def _endless(self, chunk: bytes) -> None:
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("ETag", '"endless"')
                self.end_headers()
                try:
                    while front.sent < 1 << 30:  # a bound for the test's own sake: 1 GiB
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        with front._lock:
                            front.sent += len(chunk)
                except OSError:
                    pass
                self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _match(self, request: Request) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if (rule.times is None or rule.fired < rule.times) and rule.when(request):
                    rule.fired += 1
                    return rule
        return None

    def add(
        self, when: Callable[[Request], bool], kind: str, arg: Any = None, *, times: int | None = None
    ) -> Rule:
        rule = Rule(when, kind, arg, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def options(self, storage_options: dict[str, Any], **config: float) -> dict[str, Any]:
        """``storage_options`` pointed at this front (``config``: botocore timeouts, e.g. read_timeout=1)."""
        kwargs = {**storage_options["client_kwargs"], "endpoint_url": self.endpoint}
        options = {**storage_options, "client_kwargs": kwargs}
        if config:
            options["config_kwargs"] = dict(config)
        return options

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completing(request: Request) -> bool:
    """CompleteMultipartUpload: a POST with an uploadId."""
    return request.method == "POST" and "uploadId" in request.query


def key_is(suffix: str, method: str | None = None) -> Callable[[Request], bool]:
    return lambda r: (
        r.key.endswith(suffix) and not r.query.get("uploadId") and (method is None or r.method == method)
    )
