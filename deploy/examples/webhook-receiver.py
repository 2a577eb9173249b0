#!/usr/bin/env python3
"""A webhook receiver for trying Tenure's webhooks: listens on 127.0.0.1:PORT (default
8099), answers every POST with 204, and prints what arrived (the Tenure-Webhook-Id and
Tenure-Signature headers and the JSON body). Standard library only.

    python3 deploy/examples/webhook-receiver.py 8099
    tenurectl admin webhooks add --name local --url http://127.0.0.1:8099/hook
"""
import http.server
import json
import sys


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()
        try:
            shown = json.dumps(json.loads(body), indent=2)
        except ValueError:
            shown = body.decode("utf-8", "replace")
        print(f"--- {self.path} webhook {self.headers.get('Tenure-Webhook-Id')}, "
              f"signature {self.headers.get('Tenure-Signature')}\n{shown}", flush=True)

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8099
print(f"receiving webhooks on http://127.0.0.1:{port}/hook", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
