"""A small threaded HTTP fault proxy for tests, in front of the SeaweedFS S3 port.

Pass-through unless a rule matches (method, key substring, presence of a header); each rule fires
at most `times` times. Every response is sent with `Connection: close` (one request per client
connection), which keeps framing trivial; request bodies may be Content-Length or chunked.

"Unsafe endpoint" (Action.STRIP_CONDITIONS): boto3 signs If-Match / If-None-Match (SigV4), and
SeaweedFS checks the signature, so merely deleting those headers gets 403 SignatureDoesNotMatch
(measured). The proxy therefore removes them and RE-SIGNS the request with the test credentials
(botocore's S3SigV4Auth, same Host, same body). SeaweedFS then really performs an unconditional
write: the proxy behaves exactly like an endpoint that silently ignores the conditions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kristal.store.s3 import StoreConfig

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade",
     "expect", "content-length", "trailer"}
)
_CONDITION_HEADERS = frozenset({"if-match", "if-none-match"})


class Action(StrEnum):
    STATUS = "status"  # answer `status` (500/503...) without forwarding
    RESET = "reset"  # TCP RST before forwarding
    DELAY = "delay"  # sleep `delay` seconds, then forward
    TRUNCATE = "truncate"  # forward; send headers and only `truncate_to` body bytes, then close
    DROP_RESPONSE = "drop_response"  # forward; upstream answered; close without a byte
    STRIP_CONDITIONS = "strip_conditions"  # forward without If-Match/If-None-Match (re-signed)
    TRICKLE = "trickle"  # forward; send the body one byte every `delay` seconds


@dataclass
class Rule:
    action: Action
    method: str | None = None
    key_contains: str | None = None
    header: str | None = None  # only requests carrying this header (case-insensitive)
    times: int = 1  # count limit: the rule fires at most this many times
    status: int = 500
    delay: float = 0.0
    truncate_to: int = 0
    fired: int = 0

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if self.fired >= self.times:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.key_contains is not None and self.key_contains not in urllib.parse.unquote(path):
            return False
        return self.header is None or self.header.lower() in headers


@dataclass
class Seen:
    """One request the proxy received (recorded on arrival), and the action applied to it."""

    method: str
    path: str
    headers: dict[str, str]
    action: Action | None
    upstream_status: int | None = None


@dataclass
class _State:
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultProxy:
    """Start with `start()` (or as a context manager); `url` is the endpoint to give boto3."""

    def __init__(
        self, upstream_url: str, *, access_key: str, secret_key: str, region: str = "us-east-1"
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream_url)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.credentials = Credentials(access_key, secret_key)
        self.region = region
        self._state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def config_for(self, base: StoreConfig, **overrides: Any) -> StoreConfig:
        """`base` (same bucket, prefix, credentials) pointed at this proxy."""
        return dataclasses.replace(base, endpoint_url=self.url, **overrides)

    # --- rules and observations (thread-safe) --------------------------------------------------
    def add_rule(self, action: Action | str, **kwargs: Any) -> Rule:
        rule = Rule(action=Action(action), **kwargs)
        with self._state.lock:
            self._state.rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self._state.lock:
            self._state.rules.clear()

    def requests(self, method: str | None = None, key_contains: str | None = None) -> list[Seen]:
        with self._state.lock:
            seen = list(self._state.seen)
        return [
            s for s in seen
            if (method is None or s.method == method.upper())
            and (key_contains is None or key_contains in urllib.parse.unquote(s.path))
        ]

    def _pick(self, method: str, path: str, headers: dict[str, str]) -> Rule | None:
        with self._state.lock:
            for rule in self._state.rules:
                if rule.matches(method, path, headers):
                    rule.fired += 1
                    return rule
        return None

    def _record(self, seen: Seen) -> None:
        with self._state.lock:
            self._state.seen.append(seen)


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # so Expect: 100-continue is answered here, not forwarded

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not access logs

    def do_GET(self) -> None:
        # The client may give up first (e.g. it stopped reading an over-long body): not an error.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    # --- request -------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        self.close_connection = True
        method = self.command
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = self._read_body()
        rule = self.owner._pick(method, self.path, headers)
        action = rule.action if rule else None
        seen = Seen(method, self.path, headers, action)
        self.owner._record(seen)  # on arrival: a test may look while a DELAY is still sleeping
        if rule is not None and action is Action.STATUS:
            self._answer_error(rule.status)
            return
        if action is Action.RESET:
            self._reset()
            return
        if rule is not None and action is Action.DELAY:
            time.sleep(rule.delay)
        fwd_headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        if action is Action.STRIP_CONDITIONS:
            fwd_headers = self._resign(
                [(k, v) for k, v in fwd_headers if k.lower() not in _CONDITION_HEADERS], body
            )
        upstream = http.client.HTTPConnection(
            self.owner.upstream_host, self.owner.upstream_port, timeout=60
        )
        try:
            upstream.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in fwd_headers:
                upstream.putheader(name, value)
            if body or method in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            resp = upstream.getresponse()
            seen.upstream_status = resp.status
            if action is Action.DROP_RESPONSE:
                resp.read()
                self._drop()
                return
            self._relay(resp, rule.truncate_to if action is Action.TRUNCATE and rule else None,
                        rule.delay if action is Action.TRICKLE and rule else None)
        finally:
            upstream.close()

    def _resign(self, headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
        host = self.headers.get("Host", "")
        unsigned = [
            (k, v) for k, v in headers
            if k.lower() not in ("authorization", "x-amz-date", "x-amz-content-sha256")
        ]
        request = AWSRequest(
            method=self.command, url=f"http://{host}{self.path}", data=body,
            headers=dict(unsigned),
        )
        S3SigV4Auth(self.owner.credentials, "s3", self.owner.region).add_auth(request)
        return [(k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()]

    # --- response ------------------------------------------------------------------------------
    def _relay(self, resp: http.client.HTTPResponse, truncate_to: int | None,
               trickle_s: float | None = None) -> None:
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in _HOP_BY_HOP or name.lower() == "content-length":
                self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        while trickle_s is not None:
            byte = resp.read(1)
            if not byte:
                return
            self.wfile.write(byte)
            self.wfile.flush()
            time.sleep(trickle_s)
        while True:
            chunk = resp.read(64 * 1024)
            if not chunk:
                return
            if truncate_to is not None and sent + len(chunk) > truncate_to:
                self.wfile.write(chunk[: truncate_to - sent])
                self.wfile.flush()
                self._drop()
                return
            self.wfile.write(chunk)
            sent += len(chunk)

    def _answer_error(self, status: int) -> None:
        code = {500: "InternalError", 503: "SlowDown"}.get(status, "InjectedFault")
        payload = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by faultproxy</Message></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _drop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout turns close() into a TCP RST.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.connection.close()
