"""A CHORUS agent reached by HTTP only: the bridge POSTs each council opportunity to it, and
its answer may claim a role. Nothing but Python's standard library.

    AGENT_ID=<task id> AGENT_ROLE=tpm PORT=8080 python http_agent.py
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/api/v1/opportunities/council"  # BRIDGE_OPPORTUNITY_PATH
ROLE = os.environ.get("AGENT_ROLE", "tpm")
seen: set[str] = set()  # opportunity ids: a repeat (a retry) is the same opportunity


class Opportunities(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path != PATH:
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        opportunity = json.loads(body)
        first_time = self.headers["Idempotency-Key"] not in seen
        seen.add(self.headers["Idempotency-Key"])  # the opportunity's id
        answer = b"{}"  # 2xx: delivered
        if first_time and any(role["name"] == ROLE for role in opportunity["roles"]):
            # A claim in the answer: the bridge decides it as if it came on the bus.
            answer = json.dumps({"role": ROLE, "agent_id": os.environ["AGENT_ID"]}).encode()
        print(
            f"{opportunity['id']}: {'claimed ' + ROLE if answer != b'{}' else 'received'}",
            flush=True,
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per opportunity is printed above


ThreadingHTTPServer(
    (os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080"))), Opportunities
).serve_forever()
