#!/usr/bin/env python3
"""The issue's CI test: `sluicectl submit --wait` of a file-partition job on three sluiced daemons.

usage: three_node_test.py --sluiced PATH --sluicectl PATH [--lines N] [--timeout S]

Starts three sluiced processes on loopback (each with its own --state-dir, --input-dir and
--output-dir, one shared --auth-secret-file), writes one CSV input per node, submits a job file
with `sluicectl submit --wait`, and checks: exit 0; every input line is in exactly one output;
each key sits in one node's output only. Then `jobs --json`, `status --json` and `stats --json`
are parsed as JSON, and each daemon stops on SIGTERM with exit 0.
Exit: 0 pass, 1 fail.
"""
import argparse
import collections
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def fail(reason):
    print(f"FAIL: {reason}", flush=True)
    sys.exit(1)


def start_daemon(args, root, i, secret_file):
    d = {n: os.path.join(root, f"node{i}", n) for n in ("state", "in", "out")}
    for p in d.values():
        os.makedirs(p, mode=0o700, exist_ok=True)
    port_file = os.path.join(root, f"node{i}", "port")
    log = open(os.path.join(root, f"node{i}", "log"), "w")
    proc = subprocess.Popen(
        [args.sluiced, "--listen", "127.0.0.1", "--port", "0", "--port-file", port_file,
         "--network-memory", "16m", "--state-dir", d["state"], "--auth-secret-file", secret_file,
         "--input-dir", d["in"], "--output-dir", d["out"], "--metrics-listen", "127.0.0.1:0",
         "--node-name", f"node{i}"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            fail(f"sluiced node{i} exited {proc.returncode}: " +
                 open(os.path.join(root, f"node{i}", "log")).read())
        try:
            with open(port_file) as f:
                text = f.read().strip()
            if text:
                return proc, int(text), d
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    fail(f"sluiced node{i} wrote no port file within 20 s")


def write_inputs(dirs, lines):
    """One CSV per node: 'key,id,payload'; ids are unique over all nodes."""
    expected = []
    for i, d in enumerate(dirs):
        with open(os.path.join(d["in"], "words.csv"), "w") as f:
            for n in range(lines):
                line = f"k{(n * 7 + i) % 97},{i}-{n},payload-{n * 31 % 1000}"
                f.write(line + "\n")
                expected.append(line)
    return expected


def ctl(args, common, *cmd, check=True):
    r = subprocess.run([args.sluicectl] + common + list(cmd), capture_output=True, text=True,
                       timeout=args.timeout)
    print(f"$ sluicectl {' '.join(cmd)}  -> exit {r.returncode}\n{r.stdout}{r.stderr}", flush=True)
    if check and r.returncode != 0:
        fail(f"sluicectl {' '.join(cmd)} exited {r.returncode}")
    return r


def check_outputs(dirs, job_id, expected):
    seen = collections.Counter()
    key_nodes = collections.defaultdict(set)
    for i, d in enumerate(dirs):
        for path in glob.glob(os.path.join(d["out"], "out", f"{job_id}-part-*.txt")):
            with open(path) as f:
                for line in f.read().splitlines():
                    seen[line] += 1
                    key_nodes[line.split(",")[0]].add(i)
    want = collections.Counter(expected)
    missing = want - seen
    extra = seen - want
    if missing or extra:
        fail(f"{sum(missing.values())} input lines missing, {sum(extra.values())} extra or "
             f"duplicated (e.g. {list(missing)[:3]} / {list(extra)[:3]})")
    spread = {k: n for k, n in key_nodes.items() if len(n) != 1}
    if spread:
        fail(f"keys on more than one node: {dict(list(spread.items())[:5])}")
    print(f"ok: {len(expected)} lines, each in exactly one output; {len(key_nodes)} keys, "
          f"each on one node", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluiced", required=True)
    ap.add_argument("--sluicectl", required=True)
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--timeout", type=float, default=100)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="sluice-three-node-")
    procs = []
    try:
        secret_file = os.path.join(root, "secret")
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        nodes = []
        for i in range(3):
            proc, port, d = start_daemon(args, root, i, secret_file)
            procs.append(proc)
            nodes.append((port, d))
        dirs = [d for _, d in nodes]
        expected = write_inputs(dirs, args.lines)
        job = os.path.join(root, "wordcount.toml")
        with open(job, "w") as f:
            f.write('kind = "file-partition"\n')
            f.write("nodes = [" + ", ".join(f'"127.0.0.1:{p}"' for p, _ in nodes) + "]\n")
            f.write("producer_nodes = [0, 1, 2]\nconsumer_nodes = [0, 1, 2]\n")
            f.write('input_files = ["words.csv", "words.csv", "words.csv"]\n')
            f.write('key_field = 0\ndelimiter = ","\noutput_dir = "out"\n')
        common = ["--port", str(nodes[0][0]), "--auth-secret-file", secret_file,
                  "--state-dir", os.path.join(root, "ctl-state")]
        r = ctl(args, common, "plan", job)
        if "node 2" not in r.stdout or "recommended" not in r.stdout:
            fail("plan printed no per-node estimate")
        r = ctl(args, common, "submit", job, "--wait", "--interval-ms", "200")
        job_id = r.stdout.splitlines()[0]
        if "succeeded on 3 nodes" not in r.stdout:
            fail("submit --wait did not report success on 3 nodes")
        token = os.path.join(root, "ctl-state", "jobs", f"{job_id}.token")
        if os.stat(token).st_mode & 0o777 != 0o600:
            fail(f"{token} is not mode 0600")
        check_outputs(dirs, job_id, expected)
        jobs = json.loads(ctl(args, common, "jobs", "--json").stdout)
        if [j["job_id"] for j in jobs] != [job_id] or jobs[0]["state"] != "succeeded":
            fail(f"jobs --json: {jobs}")
        status = json.loads(ctl(args, common, "status", job_id, "--json").stdout)
        if status["state"] != "succeeded" or status["records_consumed"] <= 0:
            fail(f"status --json: {status}")
        total = 0
        for port, _ in nodes:
            c = common[:]
            c[1] = str(port)
            total += json.loads(ctl(args, c, "status", job_id, "--json").stdout)["records_consumed"]
            stats = json.loads(ctl(args, c, "stats", "--json").stdout)
            if stats["available_segments"] != stats["total_segments"]:
                fail(f"node on port {port} holds segments after the job: {stats}")
        if total != len(expected):
            fail(f"the nodes consumed {total} records, the inputs have {len(expected)} lines")
        for i, p in enumerate(procs):
            p.send_signal(signal.SIGTERM)
        for i, p in enumerate(procs):
            rc = p.wait(timeout=30)
            if rc != 0:
                fail(f"sluiced node{i} exited {rc} on SIGTERM")
        procs = []
        print("PASS", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
