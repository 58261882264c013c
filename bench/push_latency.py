#!/usr/bin/python3
"""Time from the tap on the phone to PAM_SUCCESS, over a loopback relay.

Each round runs pamtester under pam_wrapper (password by pam_matrix, then
pam_smartsign), answers the push prompt with Enter, taps the right number
as the ntfy app would (an HTTP POST of the button's body to the relay), and
measures from the tap to pamtester's exit with success. The relay is
smartsignd/tests/ntfy_standin.py. Prints median, p99, min and max.

Run as root from anywhere (it adds throw-away users sspush00, sspush01, ...
and stops if one exists already):
    bench/push_latency.py [ROUNDS]      (default 100)
"""

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
STANDIN = os.path.join(ROOT, "smartsignd", "tests", "ntfy_standin.py")
MATRIX = "/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so"
PER_USER = 50  # pushes per user, within max_per_hour


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what, ready, limit=15.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if ready():
            return
        time.sleep(0.05)
    sys.exit(f"push_latency: timed out waiting for {what}")


def follow(url, notes, opened):
    """The phone: follows its topic and queues each notification."""
    with urllib.request.urlopen(url + "/json", timeout=300) as stream:
        for line in stream:
            event = json.loads(line)
            if event.get("event") == "open":
                opened.set()
            elif event.get("event") == "message":
                notes.put(event)


def tap(event, label):
    for action in event["actions"]:
        if action["label"] == label:
            request = urllib.request.Request(
                action["url"], data=action["body"].encode(), method="POST"
            )
            urllib.request.urlopen(request, timeout=10).read()
            return
    sys.exit(f"push_latency: no button {label} in {event}")


def percentile(values, p):
    values = sorted(values)
    index = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[index]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    if os.geteuid() != 0:
        sys.exit("push_latency: run as root (it adds throw-away users)")
    subprocess.run([os.path.join(ROOT, "scripts", "install-deps")], check=True)
    subprocess.run(["cargo", "build", "--release", "--workspace", "--quiet"], cwd=ROOT, check=True)

    tmp = tempfile.mkdtemp(prefix="smartsign-pushbench.")
    os.chmod(tmp, 0o755)
    processes, users = [], []
    try:
        port = free_port()
        relay = subprocess.Popen(
            ["/usr/bin/python3", STANDIN, "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
        )
        processes.append(relay)
        wait_for("the relay", lambda: listening(port))
        server = f"http://127.0.0.1:{port}"
        sock = os.path.join(tmp, "s.sock")
        config = os.path.join(tmp, "smartsign.toml")
        with open(config, "w") as f:
            f.write(
                f'socket = "{sock}"\nstate_dir = "{tmp}/state"\n'
                f'[push]\nserver = "{server}"\ntimeout = "30s"\nmax_per_hour = 100\n'
            )
        log = open(os.path.join(tmp, "smartsignd.log"), "w")
        daemon = subprocess.Popen([os.path.join(BIN, "smartsignd"), "--config", config], stderr=log)
        processes.append(daemon)
        wait_for("smartsignd", lambda: os.path.exists(sock))

        os.makedirs(os.path.join(tmp, "pam.d"))
        os.makedirs(os.path.join(tmp, "pw"))
        os.chmod(os.path.join(tmp, "pw"), 0o1777)
        with open(os.path.join(tmp, "pam.d", "bench-push"), "w") as f:
            f.write(
                f"auth required {MATRIX} passdb={tmp}/passdb\n"
                f"auth required {BIN}/libpam_smartsign.so socket={sock} timeout=30\n"
            )
        phones = {}
        count = (rounds + PER_USER - 1) // PER_USER
        with open(os.path.join(tmp, "passdb"), "w") as passdb:
            for i in range(count):
                user = f"sspush{i:02d}"
                exists = subprocess.run(["id", user], capture_output=True).returncode == 0
                if exists:
                    sys.exit(f"push_latency: user {user} exists already; remove it first "
                             f"(userdel -r {user}) if it is a leftover of this benchmark")
                subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", user], check=True)
                users.append(user)
                passdb.write(f"{user}:pw:bench-push\n")
                cli = [os.path.join(BIN, "smartsign"), "--socket", sock, "--user", user]
                added = json.loads(
                    subprocess.run(cli + ["phone", "add", "bench", "--json"], check=True,
                                   capture_output=True).stdout
                )
                code = subprocess.run(
                    ["oathtool", "--totp", "-b", "-N", "30 seconds ago", added["secret"]],
                    check=True, capture_output=True, text=True,
                ).stdout.strip()
                subprocess.run(cli + ["phone", "confirm", "bench", code], check=True,
                               capture_output=True)
                notes, opened = queue.Queue(), threading.Event()
                phone = threading.Thread(
                    target=follow, args=(added["push_url"], notes, opened), daemon=True
                )
                phone.start()
                if not opened.wait(15):
                    sys.exit("push_latency: the phone's subscription did not open")
                phones[user] = notes

        env = dict(os.environ, LD_PRELOAD="libpam_wrapper.so", PAM_WRAPPER="1",
                   PAM_WRAPPER_SERVICE_DIR=os.path.join(tmp, "pam.d"),
                   TMPDIR=os.path.join(tmp, "pw"))
        times, failed = [], 0
        for n in range(rounds):
            user = users[n // PER_USER]
            pam = subprocess.Popen(["pamtester", "bench-push", user, "authenticate"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=env)
            pam.stdin.write(b"pw\n")
            pam.stdin.flush()
            seen = b""
            while b"then press Enter" not in seen:
                chunk = pam.stdout.read1(4096)
                if not chunk:
                    break
                seen += chunk
            match = re.search(rb"Tap (\d+) on your phone", seen)
            try:
                note = phones[user].get(timeout=15)
            except queue.Empty:
                note = None
            if not match or note is None:
                failed += 1
                pam.kill()
                pam.wait()
                continue
            pam.stdin.write(b"\n")
            pam.stdin.flush()
            time.sleep(0.02)  # Enter reaches the module, which now waits
            start = time.perf_counter()
            tap(note, match.group(1).decode())
            rest = pam.communicate(timeout=30)[0]
            elapsed = time.perf_counter() - start
            if pam.returncode == 0 and b"successfully authenticated" in seen + rest:
                times.append(elapsed * 1000)
            else:
                failed += 1
        if not times:
            sys.exit(f"push_latency: no approval succeeded ({failed} failed)")
        print(
            f"tap to PAM_SUCCESS (loopback relay)  n={len(times)} "
            f"median={percentile(times, 50):.1f} ms p99={percentile(times, 99):.1f} ms "
            f"min={min(times):.1f} ms max={max(times):.1f} ms failed={failed}"
        )
        if failed:
            sys.exit(1)
    finally:
        for p in processes:
            p.kill()
            p.wait()
        for user in users:
            subprocess.run(["userdel", "-r", user], stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
