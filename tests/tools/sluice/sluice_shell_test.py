#!/usr/bin/env python3
"""`sluice put`, `sluice get` and `sluicectl release` against two real sluiced processes.

usage: sluice_shell_test.py --sluiced PATH --sluice PATH --sluicectl PATH --work-dir DIR

Daemon A holds the data (blocking map outputs; a 1 MiB store_memory makes them spill), the
reads come "from host B": with B's state directory, the job's token copied there as an engine
would hand it out. Checks:
  - two puts (partition 0 by key field, partition 1 round robin) commit and print MapOutputs;
  - every subpartition read back equals, line for line, partition 0's lines routed there in input
    order followed by partition 1's (exactly once, in order per writer); --partition 1 alone
    gives partition 1's lines only;
  - puts that fail commit nothing, and the readers see nothing of them: bad flags (exit 2), a
    daemon that is not there (exit 1 naming the socket), a wrong token (exit 1,
    PermissionDenied), a put killed mid-input (its partition is aborted, `get --partition`
    exits 1, the full reads are unchanged);
  - spill files exist before `sluicectl release` and are gone after it; a get after the release
    fails; every segment is back in both daemons' pools; both daemons exit 0 on SIGTERM.
Exit 0 pass, 1 fail.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

JOB = "shell-test"
SUBS = 4


def fail(reason):
    print(f"FAIL: {reason}", flush=True)
    sys.exit(1)


def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def lines_for(partition, count):
    # Keys repeat (k0..k996), so one key's lines must all land in one subpartition.
    return [f"k{(i * 7919 + partition) % 997}\tp{partition}-line-{i}\t{'x' * (i % 50)}"
            for i in range(count)]


def route_by_key(lines):
    subs = [[] for _ in range(SUBS)]
    for line in lines:
        subs[fnv1a(line.split("\t")[0].encode()) % SUBS].append(line)
    return subs


def route_round_robin(lines):
    subs = [[] for _ in range(SUBS)]
    for i, line in enumerate(lines):
        subs[i % SUBS].append(line)
    return subs


class Cluster:
    def __init__(self, args):
        self.a = args
        self.work = args.work_dir
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.secret = os.path.join(self.work, "secret")
        with open(os.open(self.secret, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        self.procs, self.ports, self.states = [], [], []

    def start(self, name, extra):
        state = os.path.join(self.work, f"{name}.state")
        os.makedirs(state, mode=0o700)
        port_file = os.path.join(self.work, f"{name}.port")
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen([self.a.sluiced, "--listen", "127.0.0.1", "--port", "0",
                              "--port-file", port_file, "--state-dir", state,
                              "--auth-secret-file", self.secret, "--metrics-listen",
                              "127.0.0.1:0", "--network-memory", "64m"] + extra,
                             stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if p.poll() is not None:
                fail(f"sluiced {name} exited at start with {p.returncode}")
            if os.path.exists(port_file):
                text = open(port_file).read().strip()
                if text.isdigit():
                    break
            time.sleep(0.05)
        else:
            fail(f"sluiced {name} did not write its port file")
        self.procs.append(p)
        self.ports.append(int(text))
        self.states.append(state)
        return len(self.procs) - 1

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for i, p in enumerate(self.procs):
            try:
                rc = p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                fail(f"daemon {i} did not exit within 20 s of SIGTERM")
            if rc != 0:
                fail(f"daemon {i} exited {rc} after SIGTERM (see {self.work})")

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()


def run(argv, stdin=None, expect=None, what=""):
    r = subprocess.run(argv, input=stdin, capture_output=True, timeout=120)
    if expect is not None and r.returncode != expect:
        fail(f"{what}: exit {r.returncode}, expected {expect}; stderr: "
             f"{r.stderr.decode(errors='replace').strip()}")
    return r


def put(c, a, partition, lines, extra, expect=0, what="put"):
    argv = [a.sluice, "put", "--daemon", str(c.ports[0]), "--state-dir", c.states[0],
            "--auth-secret-file", c.secret, "--job", JOB, "--partition", str(partition),
            "--subpartitions", str(SUBS), "--mode", "blocking"] + extra
    return run(argv, ("\n".join(lines) + "\n").encode(), expect, what)


def get(c, a, sub, partitions=(), expect=0, what="get"):
    # "From host B": B's state directory (its jobs/<job>.token), A's data.
    argv = [a.sluice, "get", "--from", f"127.0.0.1:{c.ports[0]}", "--job", JOB,
            "--subpartition", str(sub), "--state-dir", c.states[1], "--auth-secret-file",
            c.secret, "--timeout-ms", "20000"]
    for p in partitions:
        argv += ["--partition", str(p)]
    r = run(argv, None, expect, what)
    return r.stdout.decode().split("\n")[:-1], r.stderr.decode()


def ctl(c, a, node, *cmd, expect=0):
    return run([a.sluicectl, "--port", str(c.ports[node]), "--auth-secret-file", c.secret,
                "--state-dir", c.states[node]] + list(cmd), None, expect,
               "sluicectl " + " ".join(cmd)).stdout.decode()


def spill_files(state):
    n = 0
    for root, _, files in os.walk(os.path.join(state, "spill")):
        n += sum(1 for f in files if f.startswith("sluice-spill-"))
    return n


def check_reads(c, a, expected):
    for sub in range(SUBS):
        got, _ = get(c, a, sub, what=f"get subpartition {sub}")
        if got != expected[sub]:
            fail(f"subpartition {sub}: read {len(got)} lines, expected {len(expected[sub])} "
                 f"(first difference at line "
                 f"{next((i for i, (x, y) in enumerate(zip(got, expected[sub])) if x != y), min(len(got), len(expected[sub])))})")


def failing_puts(c, a, p0):
    # Bad flags: usage errors, nothing opened.
    r = put(c, a, 7, p0[:10], ["--subpartitions", "0"], expect=2, what="put --subpartitions 0")
    put(c, a, 7, p0[:10], ["--bogus"], expect=2, what="put --bogus")
    put(c, a, 7, p0[:10], ["--key-field", "1", "--round-robin"], expect=2,
        what="put --key-field with --round-robin")
    # A daemon that is not there: its socket does not exist.
    argv = [a.sluice, "put", "--daemon", "1", "--state-dir", c.states[0], "--auth-secret-file",
            c.secret, "--job", JOB, "--partition", "7", "--subpartitions", str(SUBS)]
    r = run(argv, b"a\nb\n", 1, "put to a missing daemon")
    if "sluiced-1.sock" not in r.stderr.decode():
        fail(f"put to a missing daemon does not name its socket: {r.stderr.decode()}")
    # A wrong token: the job belongs to another token.
    r = put(c, a, 7, p0[:10], ["--token", "0" * 64], expect=1, what="put with a wrong token")
    if "PermissionDenied" not in r.stderr.decode():
        fail(f"put with a wrong token: {r.stderr.decode()}")
    # Killed mid-input: lines written, the process killed before end of input.
    argv = [a.sluice, "put", "--daemon", str(c.ports[0]), "--state-dir", c.states[0],
            "--auth-secret-file", c.secret, "--job", JOB, "--partition", "8",
            "--subpartitions", str(SUBS), "--mode", "blocking"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdin.write(("\n".join(lines_for(8, 20000)) + "\n").encode())
    p.stdin.flush()
    time.sleep(1.0)
    p.kill()
    p.wait()
    p.stdin.close()
    if p.stdout.read():
        fail("the killed put printed a MapOutput")
    p.stdout.close()
    p.stderr.close()
    _, err = get(c, a, 0, [8], expect=1, what="get --partition of the killed put")
    if "partition 8 has no committed attempt" not in err:
        fail(f"get --partition 8: {err}")
    _, err = get(c, a, 0, [7], expect=1, what="get --partition of the failed puts")
    jobs = ctl(c, a, 0, "jobs")
    rows = {tuple(l.split()[:2]): l.split()[4] for l in jobs.splitlines()
            if l.startswith(JOB + " ")}
    if ("shell-test", "7") in rows:
        fail(f"a failed put left partition 7: {jobs}")
    if rows.get(("shell-test", "8")) not in ("aborted", "failed"):  # listed, and ended
        fail(f"the killed put's partition 8 is {rows.get(('shell-test', '8'))}: {jobs}")


def wait_segments_back(c, a, node):
    deadline = time.time() + 10
    while True:
        line = ctl(c, a, node, "stats").splitlines()[0]
        m = re.search(r"(\d+)/(\d+) segments", line)
        if m and m.group(1) == m.group(2):
            return
        if time.time() > deadline:
            fail(f"daemon {node}: segments not back 10 s after the release: {line}")
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    for f in ("--sluiced", "--sluice", "--sluicectl", "--work-dir"):
        ap.add_argument(f, required=True)
    a = ap.parse_args()
    c = Cluster(a)
    try:
        c.start("a", ["--store-memory", "1m"])
        c.start("b", [])
        p0, p1 = lines_for(0, 30000), lines_for(1, 20000)
        r0 = put(c, a, 0, p0, ["--key-field", "1"], what="put partition 0").stdout.decode()
        r1 = put(c, a, 1, p1, ["--round-robin"], what="put partition 1").stdout.decode()
        for r, n in ((r0, len(p0)), (r1, len(p1))):
            if not re.fullmatch(rf"v1;127\.0\.0\.1:{c.ports[0]};{JOB};\d;0;{SUBS};\d+;{n}\n", r):
                fail(f"put printed {r!r}, expected a MapOutput of {n} records")
        # The token, as the engine hands it to the readers on host B.
        os.makedirs(os.path.join(c.states[1], "jobs"), mode=0o700, exist_ok=True)
        shutil.copy(os.path.join(c.states[0], "jobs", JOB + ".token"),
                    os.path.join(c.states[1], "jobs", JOB + ".token"))
        by_key, rr = route_by_key(p0), route_round_robin(p1)
        expected = [by_key[k] + rr[k] for k in range(SUBS)]
        check_reads(c, a, expected)
        got, _ = get(c, a, 2, [1], what="get --partition 1")
        if got != rr[2]:
            fail(f"get --partition 1: {len(got)} lines, expected {len(rr[2])}")
        failing_puts(c, a, p0)
        check_reads(c, a, expected)  # the failed puts added nothing
        before = spill_files(c.states[0])
        if before == 0:
            fail("nothing was spilled (store_memory 1m, 2 MB of blocking output)")
        ctl(c, a, 0, "release", JOB)
        deadline = time.time() + 10
        while spill_files(c.states[0]) > 0 and time.time() < deadline:
            time.sleep(0.05)
        if spill_files(c.states[0]) > 0:
            fail(f"{spill_files(c.states[0])} spill files left after sluicectl release")
        get(c, a, 0, expect=1, what="get after release")
        for node in (0, 1):
            wait_segments_back(c, a, node)
        c.stop()
    finally:
        c.kill_all()
    print(f"PASS: {len(p0) + len(p1)} lines through sluice put/get exactly once, "
          f"{before} spill files removed by release")
    shutil.rmtree(a.work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
