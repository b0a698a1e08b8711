#!/usr/bin/env python3
"""Publish events to a KnowledgeHub Realtime gateway (POST /api/realtime/events, SPEC §4).

Python 3.8+, standard library only (urllib).

    KH_PUBLISH_KEY=pk_... python3 examples/python/publish.py CODE_CHANGE '{"file": "api/app.py", "lines": 12}'
    KH_PUBLISH_KEY=pk_... python3 examples/python/publish.py DECISION_MADE '"use Redis"' --user alice --job job-42
    python3 examples/python/publish.py --url http://127.0.0.1:3000 --key pk_... ERROR_OCCURRED '{"error": "timeout"}'

Arguments: the event type, then its data as JSON (default null).
Options:   --user ID    make the event private to that user
           --job ID     the event belongs to that job (only its subscribers get it)
           --url URL    the gateway (default $KH_URL, else http://localhost:3000)
           --key KEY    a publish key (default $KH_PUBLISH_KEY); a local development
                        server keeps its own in ./data/dev-credentials.json ("publish_key")

Prints the server's answer, {"id": "..."}, and exits 0 once the event is stored (201).
Otherwise prints the error to stderr and exits 1 (refused, unreachable) or 2 (bad arguments).

As a library:

    from publish import publish
    event_id = publish("http://localhost:3000", "pk_...", "CODE_CHANGE", {"file": "a.py"}, job_id="job-42")
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


class PublishError(Exception):
    """The gateway refused the event; status is the HTTP status (0: not reachable)."""

    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


def publish(url, key, event_type, data=None, user_id=None, job_id=None, timeout=10.0):
    """Publish one event and return the id the server assigned to it."""
    event = {"type": event_type, "data": data}
    if user_id:
        event["user_id"] = user_id
    if job_id:
        event["job_id"] = job_id
    req = urllib.request.Request(
        url.rstrip("/") + "/api/realtime/events",
        data=json.dumps(event).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + key},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.load(resp)
            if resp.status != 201:
                raise PublishError(resp.status, json.dumps(body))
            return body["id"]
    except urllib.error.HTTPError as err:
        # 400 names the bad field, 401 a wrong key, 413 too big, 415, 429 (with Retry-After).
        raw = err.read().decode("utf-8", "replace")
        try:
            body = json.loads(raw)
            message = f'{body.get("error")}: {body.get("message")}'
        except ValueError:
            message = raw.strip()
        raise PublishError(err.code, message) from None
    except urllib.error.URLError as err:
        raise PublishError(0, f"cannot reach {url}: {err.reason}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description="Publish one event to a KnowledgeHub Realtime gateway.")
    parser.add_argument("type", help="event type, e.g. CODE_CHANGE")
    parser.add_argument("data", nargs="?", default="null", help="event data as JSON (default null)")
    parser.add_argument("--user", help="make the event private to this user")
    parser.add_argument("--job", help="the job the event belongs to")
    parser.add_argument("--url", default=os.environ.get("KH_URL", "http://localhost:3000"))
    parser.add_argument("--key", default=os.environ.get("KH_PUBLISH_KEY"))
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("no publish key: pass --key or set KH_PUBLISH_KEY")
    try:
        data = json.loads(args.data)
    except ValueError as err:
        parser.error(f"data is not JSON: {err}")
    try:
        event_id = publish(args.url, args.key, args.type, data, user_id=args.user, job_id=args.job)
    except PublishError as err:
        print(f"publish failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"id": event_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
