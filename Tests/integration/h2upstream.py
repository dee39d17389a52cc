#!/usr/bin/env python3
"""An HTTP/2-only (h2c, prior knowledge) upstream for Turnout's tests, on python-h2 and asyncio.

Run: h2upstream.py --port PORT --name NAME [--max-streams N] [--unhealthy-file PATH]

Paths:
  /healthz            200 "ok" (500 while --unhealthy-file exists)
  /echo               JSON: method, path, headers, the fields HPACK sent never-indexed, body
                      length and sha256
  /trailers           "NAME\\n" then trailers x-name: NAME and x-body-sha256 of the request body
  /big?bytes=N        N bytes of the pattern upstream.py sends
  /slow?ms=N          answers after N ms
  /reset              RST_STREAM (INTERNAL_ERROR) without a response
  /reset-mid          a response head and 10 bytes, then RST_STREAM
  /goaway             answers, then GOAWAY with the last stream it received; streams that come
                      after are refused (RST_STREAM REFUSED_STREAM), and the connection closes once
                      the streams it took are done (as nghttpd, Go and Envoy do)
  /stats              JSON: connections that carried counted streams, streams, the most streams
                      open at once on one connection, RST_STREAM frames received
  anything else       200 with the server's name as body and x-served-by

Every request but /healthz and /stats is counted.
"""
import argparse
import asyncio
import hashlib
import json
import os
import sys
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.errors
import h2.settings

PATTERN = bytes(range(256)) * 4096


class Stats:
    connections = 0
    streams = 0
    max_open = 0
    resets = 0  # RST_STREAM frames received, on open streams or closed ones


class FrameCounter:
    """Reads the frame headers of what a client sends (python-h2 drops an RST_STREAM on a stream
    it has closed without a word, so they are counted here, before it)."""

    def __init__(self):
        self.skip = 24  # the connection preface
        self.buf = b""

    def feed(self, data):
        self.buf += data
        while True:
            if self.skip:
                n = min(self.skip, len(self.buf))
                self.buf, self.skip = self.buf[n:], self.skip - n
                if self.skip:
                    return
            if len(self.buf) < 9:
                return
            length, kind = int.from_bytes(self.buf[:3], "big"), self.buf[3]
            if kind == 3:
                Stats.resets += 1
            self.buf, self.skip = self.buf[9:], length


class Conn(asyncio.Protocol):
    def __init__(self, args):
        self.args = args
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.requests = {}
        self.open = 0
        self.goaway_after = None  # the last stream id taken, once GOAWAY was sent
        self.pending = {}  # stream id -> bytes waiting for the flow-control window
        self.in_batch = False
        self.frames = FrameCounter()

    def connection_made(self, transport):
        self.transport = transport
        self.counted = False
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.args.max_streams})
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def data_received(self, data):
        self.frames.feed(data)
        try:
            events = self.h2.receive_data(data)
        except Exception:
            self.transport.close()
            return
        self.in_batch = True
        try:
            self.handle_events(events)
        finally:
            self.in_batch = False
        self.flush()
        self.close_if_done()

    def handle_events(self, events):
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                if self.goaway_after is not None and ev.stream_id > self.goaway_after:
                    self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                # HPACK's never-indexed fields (hpack gives them as tuples that are not indexable).
                unindexed = [k for k, _ in [h for h in ev.headers if not getattr(h, "indexable", True)]]
                self.requests[ev.stream_id] = {"headers": dict(ev.headers), "body": hashlib.sha256(), "length": 0,
                                               "unindexed": unindexed}
                self.open += 1
                Stats.max_open = max(Stats.max_open, self.open)
                # A request without a body is handled on its StreamEnded event, as any other.
            elif isinstance(ev, h2.events.DataReceived):
                r = self.requests.get(ev.stream_id)
                if r is not None:
                    r["body"].update(ev.data)
                    r["length"] += len(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                r = self.requests.get(ev.stream_id)
                if r is not None and not r.get("handled"):
                    r["handled"] = True
                    self.handle(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.done(ev.stream_id)
            elif isinstance(ev, h2.events.WindowUpdated):
                for sid in list(self.pending):
                    self.send_pending(sid)

    def done(self, sid):
        if self.requests.pop(sid, None) is not None:
            self.open -= 1
        self.pending.pop(sid, None)
        if not self.in_batch:
            self.close_if_done()

    def close_if_done(self):
        # Only once every stream up to the GOAWAY's last one was answered (a batch of frames may
        # still hold some of them: checked after the batch).
        if self.goaway_after is not None and self.open == 0 and not self.transport.is_closing():
            # Half-close, as a server shutting down does: the client reads everything sent (the
            # GOAWAY among it), then closes its side.
            self.flush()
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()

    def eof_received(self):
        self.transport.close()

    def respond(self, sid, status, body=b"", headers=(), trailers=None):
        hdrs = [(":status", str(status)), ("x-served-by", self.args.name)] + list(headers)
        if trailers is None:
            hdrs.append(("content-length", str(len(body))))
        self.h2.send_headers(sid, hdrs, end_stream=not body and trailers is None)
        self.pending[sid] = (body, trailers)
        self.send_pending(sid)

    def send_pending(self, sid):
        body, trailers = self.pending.get(sid, (b"", None))
        while body:
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window <= 0:
                self.pending[sid] = (body, trailers)
                return
            chunk, body = body[:window], body[window:]
            self.h2.send_data(sid, chunk, end_stream=not body and trailers is None)
        if trailers is not None:
            self.h2.send_headers(sid, trailers, end_stream=True)
        self.done(sid)
        self.flush()

    def handle(self, sid):
        r = self.requests[sid]
        h = r["headers"]
        url = urlsplit(h.get(":path", "/"))
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path not in ("/healthz", "/stats"):
            Stats.streams += 1
            if not self.counted:
                # Connections that carried traffic (probes and /stats are not counted).
                self.counted = True
                Stats.connections += 1
        if path == "/healthz":
            bad = self.args.unhealthy_file and os.path.exists(self.args.unhealthy_file)
            self.respond(sid, 500 if bad else 200, b"unhealthy\n" if bad else b"ok\n")
        elif path == "/stats":
            self.respond(sid, 200, json.dumps({"connections": Stats.connections, "streams": Stats.streams,
                                               "max_open": Stats.max_open, "resets": Stats.resets}).encode())
        elif path == "/echo":
            body = json.dumps({"name": self.args.name, "method": h.get(":method"), "path": h.get(":path"),
                               "authority": h.get(":authority"), "headers": [[k, v] for k, v in h.items()],
                               "unindexed": r["unindexed"],
                               "body_length": r["length"], "body_sha256": r["body"].hexdigest()}).encode()
            self.respond(sid, 200, body, [("content-type", "application/json")])
        elif path == "/trailers":
            self.respond(sid, 200, f"{self.args.name}\n".encode(), trailers=[("x-name", self.args.name),
                                                                             ("x-body-sha256", r["body"].hexdigest())])
        elif path == "/big":
            n = int(q.get("bytes", "0"))
            self.respond(sid, 200, (PATTERN * (n // len(PATTERN) + 1))[:n])
        elif path == "/slow":
            asyncio.get_running_loop().call_later(int(q.get("ms", "1000")) / 1000, self.late, sid)
        elif path == "/reset":
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.done(sid)
        elif path == "/reset-mid":
            self.h2.send_headers(sid, [(":status", "200"), ("content-length", "100")])
            self.h2.send_data(sid, b"0123456789")
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.done(sid)
        elif path == "/goaway":
            # GOAWAY written by hand, so that the h2 state machine keeps serving the streams taken.
            last = self.h2.highest_inbound_stream_id
            self.goaway_after = last
            self.flush()
            self.transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + last.to_bytes(4, "big") + b"\x00\x00\x00\x00")
            self.respond(sid, 200, f"{self.args.name}\n".encode())
        else:
            self.respond(sid, 200, f"{self.args.name}\n".encode())

    def late(self, sid):
        if sid in self.requests and self.transport and not self.transport.is_closing():
            self.respond(sid, 200, f"{self.args.name} slow\n".encode())
            self.flush()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="h2")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--max-streams", type=int, default=100)
    ap.add_argument("--unhealthy-file")
    args = ap.parse_args()
    server = await asyncio.get_running_loop().create_server(lambda: Conn(args), args.host, args.port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
