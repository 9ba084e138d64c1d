#!/usr/bin/env python3
"""make dev's demo GraphQL origin: answers any POST with GraphQL-shaped data about the caller.

It shows what an origin behind keygate does: trust X-Keygate-Key-Id and X-Keygate-Tier only when
X-Keygate-Signature verifies (HMAC-SHA256 with the origin secret over "keygate-origin-v1", the
timestamp, the key id and the tier, one per line) and the timestamp is within 300 s.
"""
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["KEYGATE_ORIGIN_SECRET"].encode()


def verified_identity(headers):
    key_id = headers.get("X-Keygate-Key-Id", "")
    tier = headers.get("X-Keygate-Tier", "")
    stamp = headers.get("X-Keygate-Timestamp", "")
    signature = headers.get("X-Keygate-Signature", "")
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return None
    message = "\n".join(["keygate-origin-v1", stamp, key_id, tier, ""]).encode()
    expected = hmac.new(SECRET, message, hashlib.sha256).hexdigest()
    return (key_id, tier) if hmac.compare_digest(expected, signature) else None


class Origin(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        identity = verified_identity(self.headers)
        if identity is None:
            self.answer(401, {"errors": [{"message": "not signed by keygate"}]})
            return
        key_id, tier = identity
        self.answer(200, {"data": {"hello": "from the demo origin", "viewer": {"apiKeyId": key_id, "tier": tier}}})

    do_GET = do_POST

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Origin).serve_forever()
