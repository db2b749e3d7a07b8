#!/usr/bin/env python3
"""sluiced as a service, against the real executable: GET /metrics parsed by prometheus_client
(every counter ends in _total, no gauge does), /healthz, hostile HTTP clients (1 MiB header,
slowloris, 100 connections, POST) answered or closed with the daemon up and its RSS bounded,
HTTP on the data port (400 naming the metrics port, counted apart from protocol errors, logged
at debug only), SIGHUP (stays up, reopens a log renamed away, applies a changed log_level, keeps
the old settings on a broken file), sd_notify READY=1 then STOPPING=1 on a fake NOTIFY_SOCKET,
--version and usage errors, metrics_file (0640 whatever the umask, a symlink planted at its
temporary name removed and its target untouched), port files 0644, and docs/operations.md's metric
reference naming exactly the families served. Usage: sluiced_service_test.py SLUICED WORKDIR"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

SLUICED, WORK = sys.argv[1], sys.argv[2]
RSS_BOUND = 16 << 20
AUTH = b""  # "Authorization: Bearer <token>\r\n", the token the daemon made in its state dir


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)


def wait_for(pred, what, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise SystemExit("FAIL: timed out waiting for " + what)


def http(port, request, timeout=10.0):
    """Sends raw bytes, returns everything the server sent before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def get(port, path, auth=True):
    raw = http(port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" +
               (AUTH if auth else b"") + b"\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.decode(), body.decode()


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def metric(text, sample_name, **labels):
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def cli_checks():
    out = subprocess.run([SLUICED, "--version"], capture_output=True, text=True, timeout=20)
    check(out.returncode == 0 and out.stdout == "sluiced 0.2.0\n", "--version: %r" % (out,))
    for args, fragment in [(["--port", "abc"], "--port = 'abc' is not a whole number"),
                           (["--network-memory=12q"], "--network-memory"),
                           (["--metrics-listen", "nonsense", "--port", "0",
                             "--state-dir", WORK + "/st0"], "metrics_listen = 'nonsense'"),
                           (["--bogus"], "unknown option --bogus")]:
        out = subprocess.run([SLUICED] + args, capture_output=True, text=True, timeout=20)
        check(out.returncode == 2, "%s: exit %d, expected 2" % (args, out.returncode))
        check(fragment in out.stderr, "%s: stderr lacks %r: %s" % (args, fragment, out.stderr))
    out = subprocess.run([SLUICED, "--help"], capture_output=True, text=True, timeout=20)
    check(out.returncode == 0 and "SIGHUP" in out.stdout and "[SIGHUP reloads]" in out.stdout,
          "--help names SIGHUP and the reloadable options")


def check_exposition(text):
    fams = list(text_string_to_metric_families(text))
    check(len(fams) > 30, "only %d metric families" % len(fams))
    names = set()
    for fam in fams:
        check(fam.type in ("counter", "gauge"), "%s has type %s" % (fam.name, fam.type))
        for s in fam.samples:
            names.add(s.name)
            if fam.type == "counter":
                check(s.name.endswith("_total"), "counter sample %s lacks _total" % s.name)
            else:
                check(not s.name.endswith("_total"), "gauge %s ends in _total" % s.name)
    for n in ("sluice_pool_segments", "sluice_pool_segments_available",
              "sluice_data_port_http_requests_total", "sluice_protocol_errors_total",
              "sluice_http_requests_total", "sluice_jobs_running"):
        check(n in names, "no metric %s" % n)
    check("sluice_pool_segments_total" not in names, "the old pool_segments_total is back")
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            check(("# HELP " + line[7:].split()[0]) in text, "no HELP for " + line)
    check_metric_reference(text)


def check_metric_reference(text):
    """docs/operations.md's metric reference names exactly the families the daemon serves, each
    with the type it serves."""
    doc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "docs",
                       "operations.md")
    body = open(doc, encoding="utf-8").read().split("## Metric reference", 1)
    check(len(body) == 2, "docs/operations.md has no '## Metric reference' section")
    documented = dict(re.findall(r"^\| `(sluice_\w+)` \| (counter|gauge) \|", body[1], re.M))
    served = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    missing = sorted(set(served) - set(documented))
    stale = sorted(set(documented) - set(served))
    check(not missing, "metrics served but not in docs/operations.md's reference: %s" % missing)
    check(not stale, "docs/operations.md's reference names metrics not served: %s" % stale)
    wrong = sorted(n for n in served if served[n] != documented[n])
    check(not wrong, "metric types differ from docs/operations.md's reference: %s" % wrong)


def hostile(mport, pid):
    before = rss(pid)
    # A 1 MiB header: answered 431 or closed, never read whole.
    raw = b""
    try:
        raw = http(mport, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (1 << 20) + b"\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    check(raw == b"" or raw.startswith(b"HTTP/1.0 431"), "1 MiB header: %r" % raw[:40])
    # POST and an unknown path.
    check(http(mport, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n" + AUTH + b"\r\nhi")
          .startswith(b"HTTP/1.0 405"), "POST answered 405")
    check(get(mport, "/nope")[0] == 404, "unknown path answered 404")
    check(http(mport, b"garbage\r\n\r\n").startswith(b"HTTP/1.0 400"), "garbage answered 400")
    # Slowloris: a head that never ends is closed at the deadline.
    slow = socket.create_connection(("127.0.0.1", mport), timeout=15)
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 12:
        try:
            slow.sendall(b"X: y\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            slow.settimeout(0.5)
            if slow.recv(100) == b"":
                break
        except socket.timeout:
            pass
        except ConnectionResetError:
            break
    else:
        raise SystemExit("FAIL: slowloris client not closed within 12 s")
    slow.close()
    # 100 connections at once: each is answered or closed; the daemon keeps serving.
    conns = [socket.create_connection(("127.0.0.1", mport), timeout=15) for _ in range(100)]
    for c in conns:
        try:
            c.sendall(b"GET /healthz HTTP/1.0\r\n" + AUTH + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
    answered = 0
    for c in conns:
        try:
            data = c.recv(4096)
            answered += data.startswith(b"HTTP/1.0 200")
        except (ConnectionResetError, socket.timeout):
            pass
        c.close()
    check(answered >= 1, "none of 100 connections answered")
    check(get(mport, "/healthz")[0] == 200, "healthz after the attack")
    growth = rss(pid) - before
    check(growth < RSS_BOUND, "RSS grew by %d bytes under hostile HTTP" % growth)
    return answered


def check_metrics_file(pid):
    """metrics_file holds what /metrics serves only with the token: 0640 although sluiced runs
    with umask 077 (the packaged unit's UMask), rewritten through a temporary name that a planted
    symlink cannot redirect."""
    path = WORK + "/metrics.prom"
    wait_for(lambda: os.path.exists(path), "the metrics_file")
    check(os.stat(path).st_mode & 0o777 == 0o640,
          "metrics_file mode %o, not 640" % (os.stat(path).st_mode & 0o777))
    victim = WORK + "/victim"
    with open(victim, "w") as f:
        f.write("untouched\n")
    os.symlink(victim, "%s.tmp.%d" % (path, pid))
    first = os.stat(path).st_ino
    wait_for(lambda: os.stat(path).st_ino != first, "the metrics_file rewritten")
    wait_for(lambda: not os.path.lexists("%s.tmp.%d" % (path, pid)), "the planted link removed")
    check(open(victim).read() == "untouched\n", "the write followed the planted symlink")
    check(os.stat(path).st_mode & 0o777 == 0o640 and "sluice_" in open(path).read(),
          "metrics_file after the rewrite")


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    cli_checks()
    notify_path = WORK + "/notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    conf = WORK + "/sluiced.toml"
    with open(conf, "w") as f:
        f.write('log_level = "info"\nnetwork_memory = "16m"\n')
    log = WORK + "/sluiced.log"
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen(
        [SLUICED, "--config", conf, "--port", "0", "--port-file", WORK + "/port",
         "--metrics-listen=127.0.0.1:0", "--metrics-port-file", WORK + "/mport",
         "--state-dir", WORK + "/state", "--log-file", log,
         "--metrics-file", WORK + "/metrics.prom", "--metrics-interval-ms", "100"],
        env=env, preexec_fn=lambda: os.umask(0o077))  # packaging/sluiced.service's UMask
    try:
        ready = notify.recv(4096).decode()
        check(ready.startswith("READY=1"), "first notification %r" % ready)
        port = int(open(WORK + "/port").read())
        mport = int(open(WORK + "/mport").read())
        for name in ("port", "mport"):  # nothing secret: readable by all, whatever the umask
            mode = os.stat(WORK + "/" + name).st_mode & 0o777
            check(mode == 0o644, "port file %s mode %o, not 644" % (name, mode))
        token_file = WORK + "/state/metrics_token"
        check(os.stat(token_file).st_mode & 0o777 == 0o600, "metrics_token is not 0600")
        global AUTH
        AUTH = b"Authorization: Bearer " + open(token_file, "rb").read().strip() + b"\r\n"
        # Nothing without the token: 401 naming the header, no metric in it.
        for path in ("/metrics", "/healthz", "/nope"):
            code, head, body = get(mport, path, auth=False)
            check(code == 401 and "WWW-Authenticate: Bearer" in head and "sluice_" not in body
                  and "metrics_token_file" in body,
                  "%s without the token: %d %r" % (path, code, body))
        code, head, body = get(mport, "/healthz")
        check(code == 200 and body == "ok\n", "healthz: %d %r" % (code, body))
        code, head, body = get(mport, "/metrics")
        check(code == 200 and "text/plain; version=0.0.4" in head, "metrics head: " + head)
        check_exposition(body)
        check_metrics_file(proc.pid)

        # HTTP on the data port: a 400 naming the metrics endpoint, counted apart, no warning.
        raw = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        check(raw.startswith(b"HTTP/1.0 400") and b"GET /metrics" in raw
              and b"metrics_listen" in raw, "data port answer %r" % raw[:80])
        text = get(mport, "/metrics")[2]
        check(metric(text, "sluice_data_port_http_requests_total", side="served") == 1,
              "data_port_http_requests_total is not 1")
        check(metric(text, "sluice_protocol_errors_total", side="served") == 0,
              "the HTTP request counted as a protocol error")
        check("HTTP request" not in open(log).read(), "logged above debug at log_level info")

        hostile(mport, proc.pid)
        check(proc.poll() is None, "sluiced died under hostile HTTP")

        # SIGHUP: logrotate moved the log away; log_level changes to debug.
        os.rename(log, log + ".1")
        with open(conf, "w") as f:
            f.write('log_level = "debug"\nnetwork_memory = "16m"\n')
        proc.send_signal(signal.SIGHUP)
        check(notify.recv(4096).decode() == "RELOADING=1", "RELOADING=1 on SIGHUP")
        check(notify.recv(4096).decode() == "READY=1", "READY=1 after the reload")
        wait_for(lambda: os.path.exists(log) and "configuration reloaded" in open(log).read(),
                 "the reopened log")
        check(proc.poll() is None, "SIGHUP ended sluiced")
        http(port, b"GET / HTTP/1.0\r\n\r\n")  # logged at debug: now visible
        wait_for(lambda: "HTTP request" in open(log).read(), "the debug line after SIGHUP")
        # A broken file: logged, the running settings stay.
        with open(conf, "w") as f:
            f.write('log_level = "loud"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration not reloaded" in open(log).read(), "reload refusal")
        check(proc.poll() is None, "a bad reload ended sluiced")
        check(get(mport, "/healthz")[0] == 200, "healthz after the bad reload")

        proc.send_signal(signal.SIGTERM)
        msgs = []
        while not any(m.startswith("STOPPING=1") for m in msgs):
            msgs.append(notify.recv(4096).decode())
        check(proc.wait(timeout=60) == 0, "exit status after SIGTERM")
        check("every segment returned" in open(log).read(), "leak check line in the log")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print("sluiced service test passed")


main()
