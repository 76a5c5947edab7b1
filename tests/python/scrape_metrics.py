#!/usr/bin/env python3
"""Scrapes custodyd's /metrics like Prometheus does (HTTP/1.1, optionally
mutual TLS) and parses it with prometheus_client's parsers; prints one JSON
document for tests/e2e/metrics.rs:

  {"status": 200, "content_type": "...", "samples": [[name, {labels}, value], ...],
   "families": {name: type}}

custodyd serves the OpenMetrics text format, so the strict OpenMetrics parser
is the authority; the classic Prometheus text parser must read the same
samples. A non-200 answer prints its status (and body) without parsing.

With --rules FILE and --config FILE it also reads the alert rules and the
scrape config with PyYAML and adds {"rules": [...], "config": {...}}.
A TLS handshake the server refuses prints {"status": "tls-refused", ...}.
"""

import argparse
import http.client
import json
import socket
import ssl
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr", help="host:port")
    ap.add_argument("--path", default="/metrics")
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--server-name", default="localhost")
    ap.add_argument("--rules")
    ap.add_argument("--config")
    a = ap.parse_args()

    host, port = a.addr.rsplit(":", 1)
    if a.ca:
        ctx = ssl.create_default_context(cafile=a.ca)
        ctx.load_cert_chain(a.cert, a.key)
        # Prometheus scrapes with HTTP/1.1 by default.
        ctx.set_alpn_protocols(["http/1.1"])
        conn = TlsConnection(host, int(port), ctx, a.server_name)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", a.path, headers={"Accept": "application/openmetrics-text"})
        resp = conn.getresponse()
    except (ssl.SSLError, ConnectionResetError) as e:
        # A listener without HTTP services refuses HTTP/1.1 in the handshake.
        print(json.dumps({"status": "tls-refused", "error": str(e)}))
        return
    body = resp.read().decode("utf-8", "replace")
    out = {"status": resp.status, "content_type": resp.getheader("content-type", "")}
    if resp.status != 200:
        out["body"] = body
    else:
        samples = []
        families = {}
        for fam in openmetrics_families(body):
            families[fam.name] = fam.type
            for s in fam.samples:
                samples.append([s.name, s.labels, s.value])
        classic = sorted(
            [s.name, sorted(s.labels.items()), s.value]
            for fam in text_families(body)
            for s in fam.samples
        )
        strict = sorted([n, sorted(l.items()), v] for n, l, v in samples)
        if classic != strict:
            print("the two parsers disagree", file=sys.stderr)
            sys.exit(3)
        out["samples"] = samples
        out["families"] = families
    if a.rules:
        import yaml

        with open(a.rules) as f:
            out["rules"] = yaml.safe_load(f)
        with open(a.config) as f:
            out["config"] = yaml.safe_load(f)
    print(json.dumps(out))


class TlsConnection(http.client.HTTPSConnection):
    """HTTPS to an address, verifying the server certificate by another name."""

    def __init__(self, host, port, ctx, server_name):
        super().__init__(host, port, context=ctx, timeout=10)
        self._ctx = ctx
        self._server_name = server_name

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._server_name)


if __name__ == "__main__":
    main()
