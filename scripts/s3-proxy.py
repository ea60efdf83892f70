#!/usr/bin/env python3
"""An HTTP proxy in front of a test S3 server, for integration tests that need a misbehaving S3.

    s3-proxy.py --upstream http://127.0.0.1:PORT [--listen-port 0]
                [--fail-first N | --fail-for-secs S] [--strip-conditional]

Prints `PORT <port>` as its first stdout line once it accepts connections, then serves until
killed. Tests start it with $DRIFTLESS_TEST_S3_PYTHON (scripts/with-s3 sets it) and point the
S3 client at http://127.0.0.1:<port>.

--fail-first N     the first N requests get 503 SlowDown, as S3 throttling answers; later ones
                   are forwarded.
--fail-for-secs S  the same for every request in the first S seconds after start.
--strip-conditional
                   drops If-Match, If-None-Match and x-amz-copy-source-if-* from requests: a
                   server that ignores conditional writes. moto does not check signatures, so
                   the request still goes through although those headers were signed.
--exit-on-stdin-eof
                   exits when stdin closes, so a test that dies without killing the proxy (a
                   panic before its guard runs) does not leave it behind; start it with a
                   piped stdin then.

Requests are forwarded as they came: method, path and query untouched, Host as the client
sent (and signed) it, bodies streamed (Content-Length ones in pieces, chunked ones re-chunked,
aws-chunked ones are ordinary bytes with a Content-Length to a proxy). Responses likewise.
Python standard library only, so any python3 runs it.
"""

import argparse
import http.client
import http.server
import sys
import threading
import time
import urllib.parse

# Per RFC 9110 section 7.6.1: meaningful only for one connection, never forwarded.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# The proxy answers Expect: 100-continue itself (http.server does), so upstream gets the
# body at once; http.client would not wait for a 100 anyway.
NOT_FORWARDED = HOP_BY_HOP | {"expect"}
CONDITIONAL = {
    "if-match",
    "if-none-match",
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-none-match",
    "x-amz-copy-source-if-modified-since",
    "x-amz-copy-source-if-unmodified-since",
}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)
PIECE = 64 * 1024


class Faults:
    """Decides, thread-safely, which requests are answered 503."""

    def __init__(self, fail_first, fail_for_secs):
        self.lock = threading.Lock()
        self.left = fail_first
        self.until = time.monotonic() + fail_for_secs if fail_for_secs else None

    def should_fail(self):
        if self.until is not None and time.monotonic() < self.until:
            return True
        with self.lock:
            if self.left > 0:
                self.left -= 1
                return True
        return False


def read_chunked(rfile):
    """Yields the data of a chunked body's chunks, then consumes its trailer section."""
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ConnectionError("client closed inside a chunked body")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        left = size
        while left:
            data = rfile.read(min(left, PIECE))
            if not data:
                raise ConnectionError("client closed inside a chunk")
            left -= len(data)
            yield data
        rfile.readline(3)  # the CRLF after the chunk data
    # HTTP trailers (rare from S3 clients; aws-chunked trailers are inside the payload) end at
    # an empty line. They are dropped: http.client cannot send them.
    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
        pass


class Handler(http.server.BaseHTTPRequestHandler):
    # Keep-alive: SDK clients reuse connections, and a proxy that closes each one would test
    # a different client path than the real server does.
    protocol_version = "HTTP/1.1"
    server_version = "s3-proxy"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        # Silent by default: a test that pipes stderr and never reads it would block us.
        if self.server.verbose:
            sys.stderr.write("s3-proxy: %s\n" % (format % args))

    def body_pieces(self):
        """The request body as an iterator of byte strings, read as it is forwarded."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)

        def fixed():
            left = length
            while left:
                data = self.rfile.read(min(left, PIECE))
                if not data:
                    raise ConnectionError("client closed inside the body")
                left -= len(data)
                yield data

        return fixed()

    def handle_any(self):
        body = self.body_pieces()
        if self.server.faults.should_fail():
            for _ in body:  # drained, so the connection stays usable for the next request
                pass
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.send_header("Retry-After", "1")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(SLOW_DOWN)
            return
        self.forward(body)

    def forward(self, body):
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        upstream = self.server.upstream
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port or 80, timeout=300)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            if "Host" not in self.headers:
                conn.putheader("Host", upstream.netloc)
            for name, value in self.headers.items():
                lower = name.lower()
                if lower in NOT_FORWARDED or (chunked and lower == "content-length"):
                    continue
                if self.server.strip_conditional and lower in CONDITIONAL:
                    continue
                conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for data in body:
                conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if chunked:
                conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            message = ("s3-proxy: upstream %s: %s" % (upstream.netloc, error)).encode()
            self.send_response(502)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(message)))
            # The request body may be half read: this connection cannot carry another request.
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            self.wfile.write(message)
            return
        try:
            self.relay(response)
        finally:
            conn.close()

    def relay(self, response):
        self.log_request(response.status)
        log = self.server.write_log
        if log is not None and self.command in ("PUT", "POST", "DELETE") and response.status < 300:
            # One line per write the server accepted, flushed at once, so a test can count
            # what the stage received even when its client is killed right after.
            with self.server.write_log_lock:
                log.write("%s %s %d\n" % (self.command, self.path, response.status))
                log.flush()
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        # Without a length the upstream body ends where its chunks end (http.client decodes
        # them) or where its connection closes: re-chunk it to our client.
        rechunk = not no_body and length is None
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            return
        while True:
            data = response.read1(PIECE)
            if not data:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if rechunk else data)
        if rechunk:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Tests open many connections at once (parallel uploads).
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that hangs up mid-response (a test's timeout, a cancelled download) is no
        # proxy error; print tracebacks only when asked.
        if self.verbose:
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT of the S3 server")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0, help="0 picks a free port")
    faults = parser.add_mutually_exclusive_group()
    faults.add_argument("--fail-first", type=int, default=0, metavar="N")
    faults.add_argument("--fail-for-secs", type=float, default=0.0, metavar="S")
    parser.add_argument("--strip-conditional", action="store_true")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    parser.add_argument("--write-log", metavar="FILE", help="append each accepted PUT, POST and DELETE to FILE")
    args = parser.parse_args()

    upstream = urllib.parse.urlsplit(args.upstream)
    if upstream.scheme != "http" or not upstream.hostname:
        parser.error("--upstream must be http://HOST:PORT")

    server = Server((args.listen_host, args.listen_port), Handler)
    server.upstream = upstream
    server.strip_conditional = args.strip_conditional
    server.verbose = args.verbose
    server.write_log = open(args.write_log, "a", encoding="utf-8") if args.write_log else None
    server.write_log_lock = threading.Lock()
    # The fault window starts when the port is known, which is when clients can start.
    server.faults = Faults(args.fail_first, args.fail_for_secs)
    print("PORT %d" % server.server_address[1], flush=True)
    if args.exit_on_stdin_eof:

        def watch_stdin():
            sys.stdin.buffer.read()
            server.shutdown()

        threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
