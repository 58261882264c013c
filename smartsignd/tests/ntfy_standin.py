#!/usr/bin/python3
"""A stand-in for an ntfy server, for SmartSign's tests.

It speaks the part of ntfy's documented HTTP API that SmartSign and the
ntfy phone app use, and nothing else:

  POST /                 publish as JSON: topic, title, message, priority,
                         tags, actions (at most three; "http" actions need
                         a url; method defaults to POST)
  POST|PUT /TOPIC        publish the request body as the message
  GET /TOPIC/json        the JSON stream: an "open" event, the cached
                         messages selected by since= (all, a Unix time, a
                         duration such as 10m, or a message id), then new
                         messages as they come and a "keepalive" event every
                         --keepalive seconds; poll=1 ends after the cache

With --token, every request needs "Authorization: Bearer TOKEN" except
publishing with POST /TOPIC to a topic named by --public-write (ntfy's
write-only access for everyone). With --cache FILE the messages survive a
restart, like ntfy's cache-file. Prints "listening on PORT" once ready.
"""

import argparse
import json
import os
import re
import secrets
import string
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOPIC = re.compile(r"^[-_A-Za-z0-9]{1,64}$")
ID_CHARS = string.ascii_letters + string.digits
MAX_BODY = 4096
MAX_ACTIONS = 3
CACHE_SECONDS = 12 * 3600


class Cache:
    def __init__(self, path):
        self.path = path
        self.messages = []
        self.changed = threading.Condition()
        if path and os.path.exists(path):
            with open(path) as f:
                self.messages = [json.loads(line) for line in f if line.strip()]

    def add(self, message):
        with self.changed:
            self.messages.append(message)
            if self.path:
                with open(self.path, "a") as f:
                    f.write(json.dumps(message) + "\n")
            self.changed.notify_all()

    def since(self, topic, since):
        """Cached messages of `topic` selected by a since= value."""
        now = time.time()
        with self.changed:
            mine = [m for m in self.messages if m["topic"] == topic]
        if since in (None, "", "none"):
            return []
        if since == "all":
            return mine
        if since.isdigit():
            return [m for m in mine if m["time"] >= int(since)]
        match = re.fullmatch(r"(\d+)([smhd])", since)
        if match:
            unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
            start = now - int(match.group(1)) * unit
            return [m for m in mine if m["time"] >= start]
        for index, m in enumerate(mine):
            if m["id"] == since:
                return mine[index + 1:]
        return mine


def new_id():
    return "".join(secrets.choice(ID_CHARS) for _ in range(12))


def event(kind, topic, **fields):
    return {"id": new_id(), "time": int(time.time()), "event": kind, "topic": topic, **fields}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ntfy-standin"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("ntfy-standin: " + (fmt % args) + "\n")

    def reply(self, status, body):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, text):
        self.reply(status, {"code": code, "http": status, "error": text})

    def authorized(self, public_topic=None):
        token = self.server.token
        if token is None:
            return True
        if public_topic is not None and public_topic in self.server.public_write:
            return True
        given = self.headers.get("Authorization", "")
        if secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
        self.error(401, 40101, "unauthorized")
        return False

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY * 4:
            self.error(413, 41301, "request entity too large")
            return None
        return self.rfile.read(length)

    def do_PUT(self):
        self.do_POST()

    def do_POST(self):
        path = self.path.split("?", 1)[0].strip("/")
        if path == "":
            self.publish_json()
        elif TOPIC.match(path):
            self.publish_raw(path)
        else:
            self.error(404, 40401, "page not found")

    def publish_json(self):
        if not self.authorized():
            return
        body = self.read_body()
        if body is None:
            return
        try:
            request = json.loads(body)
        except ValueError:
            return self.error(400, 40017, "invalid request: request body must be message JSON")
        topic = request.get("topic", "")
        if not isinstance(topic, str) or not TOPIC.match(topic):
            return self.error(400, 40009, "invalid request: topic invalid")
        actions = request.get("actions", [])
        if not isinstance(actions, list) or len(actions) > MAX_ACTIONS:
            return self.error(400, 40018, "invalid request: too many actions")
        checked = []
        for action in actions:
            kind = action.get("action")
            if kind not in ("view", "http", "broadcast") or not action.get("label"):
                return self.error(400, 40018, "invalid request: action invalid")
            if kind in ("view", "http") and not action.get("url"):
                return self.error(400, 40018, "invalid request: action url required")
            action = dict(action, id=new_id())
            if kind == "http":
                action.setdefault("method", "POST")
            checked.append(action)
        message = request.get("message") or "triggered"
        if len(message.encode()) > MAX_BODY:
            return self.error(400, 40002, "invalid request: message too large")
        fields = {"message": message}
        for key in ("title", "tags", "priority", "click"):
            if key in request:
                fields[key] = request[key]
        if checked:
            fields["actions"] = checked
        stored = event("message", topic, **fields)
        self.server.cache.add(stored)
        self.reply(200, stored)

    def publish_raw(self, topic):
        if not self.authorized(public_topic=topic):
            return
        body = self.read_body()
        if body is None:
            return
        text = body.decode("utf-8", "replace")
        if len(body) > MAX_BODY:
            return self.error(400, 40002, "invalid request: message too large")
        stored = event("message", topic, message=text or "triggered")
        self.server.cache.add(stored)
        self.reply(200, stored)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[1] != "json" or not TOPIC.match(parts[0]):
            return self.error(404, 40401, "page not found")
        topic = parts[0]
        if not self.authorized():
            return
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        poll = params.get("poll") in ("1", "true", "yes")
        since = params.get("since", "all" if poll else None)

        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(obj):
            data = (json.dumps(obj) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            if not poll:
                send(event("open", topic))
            sent = set()
            for m in self.server.cache.since(topic, since):
                send(m)
                sent.add(m["id"])
            if poll:
                self.wfile.write(b"0\r\n\r\n")
                return
            with self.server.cache.changed:
                seen = len(self.server.cache.messages)
            last_keepalive = time.time()
            while not self.server.stopping:
                with self.server.cache.changed:
                    self.server.cache.changed.wait(timeout=0.2)
                    fresh = self.server.cache.messages[seen:]
                    seen = len(self.server.cache.messages)
                for m in fresh:
                    if m["topic"] == topic and m["id"] not in sent:
                        send(m)
                if time.time() - last_keepalive >= self.server.keepalive:
                    send(event("keepalive", topic))
                    last_keepalive = time.time()
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    parser = argparse.ArgumentParser(description="ntfy stand-in for tests")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--keepalive", type=float, default=45.0)
    parser.add_argument("--token")
    parser.add_argument("--public-write", action="append", default=[])
    parser.add_argument("--cache")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
    server.daemon_threads = True
    server.cache = Cache(args.cache)
    server.keepalive = args.keepalive
    server.token = args.token
    server.public_write = set(args.public_write)
    server.verbose = args.verbose
    server.stopping = False
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
