"""A DNS server for the tests, built on dnslib (PyPI): answers A, AAAA and SRV queries from a
table the test changes while it runs, on a UDP port of 127.0.0.1. It can be stopped (the port
then refuses) and started again on the same port."""
import socket
import threading

from dnslib import AAAA, A, QTYPE, RCODE, RR, SRV, DNSRecord


class DNSServer:
    def __init__(self, port=None):
        self.lock = threading.Lock()
        # name -> {"A": [(ip, ttl)], "AAAA": [...], "SRV": [(priority, weight, port, target, ttl)]}
        self.zone = {}
        self.queries = 0
        self.port = port
        self.sock = None
        self.thread = None
        self.start()

    def set(self, name, rtype, records):
        with self.lock:
            self.zone.setdefault(name.rstrip("."), {})[rtype] = list(records)

    def set_a(self, name, ips, ttl=1):
        self.set(name, "A", [(ip, ttl) for ip in ips])

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port or 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread:
            self.running = False
            self.thread.join()
            self.sock.close()
            self.thread = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _serve(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                request = DNSRecord.parse(data)
            except Exception:
                continue
            reply = request.reply()
            qname = str(request.q.qname).rstrip(".")
            qtype = QTYPE[request.q.qtype]
            with self.lock:
                self.queries += 1
                entry = self.zone.get(qname)
                records = list((entry or {}).get(qtype, []))
            if entry is None:
                reply.header.rcode = RCODE.NXDOMAIN
            for r in records:
                if qtype == "A":
                    reply.add_answer(RR(qname, QTYPE.A, rdata=A(r[0]), ttl=r[1]))
                elif qtype == "AAAA":
                    reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(r[0]), ttl=r[1]))
                elif qtype == "SRV":
                    priority, weight, port, target, ttl = r
                    reply.add_answer(RR(qname, QTYPE.SRV, rdata=SRV(priority, weight, port, target), ttl=ttl))
            try:
                self.sock.sendto(reply.pack(), peer)
            except OSError:
                pass
