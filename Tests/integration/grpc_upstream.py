#!/usr/bin/env python3
"""A real gRPC server (grpcio, plaintext HTTP/2) for Turnout's tests, with the standard health service.

Run: grpc_upstream.py --port PORT --name NAME [--max-connection-age-ms N] [--tls-cert FILE --tls-key FILE]

Methods (raw bytes in and out, no protobuf stubs needed):
  /test.Echo/Unary          answers NAME + ":" + the request
  /test.Echo/Stream         answers N messages NAME:0 .. NAME:N-1, N = int(request)
  /test.Echo/Fail           ends with status NOT_FOUND and message "no such thing: <request>"
  /test.Echo/Slow           answers after int(request) milliseconds
  /test.Control/SetServing  request b"1" or b"0": the health service's overall status (also for
                            the service "test.Echo")
  grpc.health.v1.Health     Check and Watch (grpcio-health-checking)
"""
import argparse
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="grpc")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--fail-code", type=int, default=0, help="/test.Echo/Unary fails with this gRPC status code")
    ap.add_argument("--tls-cert", help="serve TLS (HTTP/2 over TLS, ALPN h2) with this certificate...")
    ap.add_argument("--tls-key", help="...and this key")
    ap.add_argument("--max-connection-age-ms", type=int, default=0,
                    help="send GOAWAY on every connection this long after it opened (grpc.max_connection_age_ms)")
    a = ap.parse_args()
    name = a.name.encode()
    health_servicer = health.HealthServicer()

    def set_serving(serving):
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        health_servicer.set("", status)
        health_servicer.set("test.Echo", status)

    def unary(request, context):
        if a.fail_code:
            context.abort(grpc.StatusCode([s for s in grpc.StatusCode if s.value[0] == a.fail_code][0]), "failing on purpose")
        return name + b":" + request

    def stream(request, context):
        for i in range(int(request)):
            yield name + b":" + str(i).encode()

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request.decode())

    def slow(request, context):
        time.sleep(int(request) / 1000)
        return name + b":slow"

    def control(request, context):
        set_serving(request == b"1")
        return b"ok"

    echo = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })
    ctl = grpc.method_handlers_generic_handler("test.Control", {"SetServing": grpc.unary_unary_rpc_method_handler(control)})
    options = []
    if a.max_connection_age_ms:
        options = [("grpc.max_connection_age_ms", a.max_connection_age_ms), ("grpc.max_connection_age_grace_ms", 10_000)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), handlers=[echo, ctl], options=options)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    set_serving(True)
    if a.tls_cert:
        creds = grpc.ssl_server_credentials([(open(a.tls_key, "rb").read(), open(a.tls_cert, "rb").read())])
        server.add_secure_port(f"{a.host}:{a.port}", creds)
    else:
        server.add_insecure_port(f"{a.host}:{a.port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
