#!/usr/bin/env python3
"""Runs sluice-harness once with --json and checks its report (a ctest integration test).

usage: harness_test.py --harness PATH [options] -- HARNESS_ARGS...

By default the run must exit 0 with "ok": true, an empty error list and zero lost, duplicated,
reordered, corrupted records and leaked segments. Options:
  --check EXPR          extra condition on the report, e.g. 'records_received>=1000',
                        'records_received==records_expected' (another field),
                        'observed~SIGKILL' (substring), 'follow_up_ok==true' (repeatable)
  --expect-exit N       expect this exit status and no JSON (a refused command line)
  --expect-stderr TEXT  with --expect-exit: text the harness must print on stderr
  --needs-netns         skip (exit 77, reason printed) unless root and `ip netns add` works
  --file-job DIR        generate input files in DIR, run the file-partition job on them and
                        check the part files here too
  --secret-file DIR:MODE  write a random secret to DIR/secret with this octal mode and pass
                        --auth-secret-file DIR/secret to the harness
  --state-dir DIR       make DIR/auth_secret (0600) as sluiced does on first start and pass
                        --state-dir DIR to the harness
  --timeout SECONDS     SIGTERM the harness after this long (it then cleans up), default 100
Exit: 0 pass, 1 fail, 77 skipped (ctest SKIP_RETURN_CODE).
"""
import argparse
import atexit
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile

SKIP = 77


def skip(reason):
    print(f"SKIP: {reason}", flush=True)
    sys.exit(SKIP)


def fail(reason):
    print(f"FAIL: {reason}", flush=True)
    sys.exit(1)


def netns_permitted():
    if os.geteuid() != 0:
        return "not root: network namespaces, veth and bridges need root"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 nftables)"
    name = f"sluice-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns add' is not permitted here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def generate_files(directory, files=3, lines=20000, seed=7):
    """CSV lines 'key,payload,seq'; every 997th line has no comma (no key field 1)."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(os.path.join(directory, "out"))
    rng = random.Random(seed)
    paths = []
    for f in range(files):
        path = os.path.join(directory, f"input-{f}.csv")
        with open(path, "w") as out:
            for i in range(lines):
                if i % 997 == 996:
                    out.write(f"keyless-line-{f}-{i}\n")
                    continue
                key = f"k{int(rng.paretovariate(1.2)) % 5000}"
                payload = "x" * rng.randint(5, 200)
                out.write(f"{f}-{i},{key},{payload}\n")
        paths.append(path)
    return paths, os.path.join(directory, "out")


def write_secret(directory, name, mode):
    """A fresh random secret in directory/name with the given mode; returns its path."""
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, mode=0o700)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(path, mode)
    return path


def check_file_outputs(inputs, parts):
    expected = collections.Counter()
    for path in inputs:
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if len(line.split(",")) > 1:
                    expected[line] += 1
    got = collections.Counter()
    key_parts = collections.defaultdict(set)
    for i, path in enumerate(parts):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                got[line] += 1
                key_parts[line.split(",")[1]].add(i)
    if got != expected:
        missing = sum((expected - got).values())
        extra = sum((got - expected).values())
        fail(f"file-partition outputs differ from the inputs: {missing} lines missing, "
             f"{extra} unexpected")
    split = [k for k, p in key_parts.items() if len(p) > 1]
    if split:
        fail(f"{len(split)} keys were written by more than one consumer, e.g. {split[0]}")
    print(f"file-partition: {sum(got.values())} lines in {len(parts)} parts match the inputs")


def evaluate(report, expr):
    for op in (">=", "<=", "==", "!=", "~", ">", "<"):
        if op in expr:
            key, want = expr.split(op, 1)
            break
    else:
        fail(f"bad --check {expr!r}")
    if key not in report:
        fail(f"the report has no field {key!r} (check {expr!r})")
    have = report[key]
    if op == "~":
        ok = want in (have if isinstance(have, str) else json.dumps(have))
    else:
        # The right side is a number or literal, or the name of another report field.
        want_v = report[want] if want in report else json.loads(want)
        ok = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
              "!=": lambda a, b: a != b, ">": lambda a, b: a > b,
              "<": lambda a, b: a < b}[op](have, want_v)
    if not ok:
        fail(f"check {expr!r} failed: {key} = {have!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--harness", required=True)
    ap.add_argument("--check", action="append", default=[])
    ap.add_argument("--expect-exit", type=int)
    ap.add_argument("--expect-stderr")
    ap.add_argument("--needs-netns", action="store_true")
    ap.add_argument("--file-job")
    ap.add_argument("--secret-file")
    ap.add_argument("--state-dir")
    ap.add_argument("--timeout", type=float, default=100)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = a.args[1:] if a.args and a.args[0] == "--" else a.args

    if a.needs_netns:
        reason = netns_permitted()
        if reason:
            skip(reason)

    inputs = []
    if a.file_job:
        inputs, out_dir = generate_files(a.file_job)
        args += ["--job", "file-partition", "--input", *inputs, "--output-dir", out_dir,
                 "--delimiter", ",", "--key-field", "1"]

    if a.secret_file:
        directory, mode = a.secret_file.rsplit(":", 1)
        args += ["--auth-secret-file", write_secret(directory, "secret", int(mode, 8))]
    if a.state_dir:
        write_secret(a.state_dir, "auth_secret", 0o600)
        args += ["--state-dir", a.state_dir]

    if a.expect_exit is None:
        args = args + ["--json"]
    # The harness makes its run directory under $TMPDIR: a scratch one per test, so a run that
    # keeps its logs (a failure, by design) leaves nothing behind and a pass can be checked to
    # have removed its directory.
    scratch = tempfile.mkdtemp(prefix="sluice-harness-test-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    cmd = [a.harness, *args]
    print("running:", " ".join(cmd), flush=True)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, TMPDIR=scratch))
    try:
        out, err = p.communicate(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)  # the harness cancels, stops the daemons, removes netns
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        sys.stderr.write(err)
        fail(f"sluice-harness did not finish within {a.timeout} s")
    sys.stderr.write(err)

    if a.expect_exit is not None:
        if p.returncode != a.expect_exit:
            fail(f"exit status {p.returncode}, expected {a.expect_exit}")
        if a.expect_stderr and a.expect_stderr not in err:
            fail(f"stderr does not say {a.expect_stderr!r}")
        print("PASS: refused as expected")
        return

    text = out.strip()
    try:
        report = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"stdout is not exactly one JSON object ({e}): {text[:500]!r}")
    if not isinstance(report, dict):
        fail("the JSON is not an object")
    print(json.dumps(report, indent=1))
    if report.get("skipped_reason"):
        skip(report["skipped_reason"])
    required = ["nodes", "producers", "consumers", "records_sent", "records_received", "lost",
                "duplicated", "reordered", "corrupted", "leaked_segments", "seconds",
                "mib_per_second", "fault", "errors", "ok"]
    missing = [k for k in required if k not in report]
    if missing:
        fail(f"the report lacks {missing}")
    if report["ok"] is not True or p.returncode != 0:
        fail(f"not ok (exit {p.returncode}): errors {report['errors']}")
    if report["errors"]:
        fail(f"ok with errors {report['errors']}")
    for k in ("duplicated", "reordered", "corrupted", "leaked_segments"):
        if report[k] != 0:
            fail(f"{k} = {report[k]}")
    if report["fault"] in ("none", "stall-consumer", "drop", "slow-consumer", "garbage",
                           "wrong-secret") and report["lost"] != 0:
        fail(f"lost = {report['lost']}")
    for c in a.check:
        evaluate(report, c)
    if a.file_job:
        check_file_outputs(inputs, report.get("output_files", []))
    left = os.listdir(scratch)
    if left and "--keep-logs" not in args:
        fail(f"a passing run left {left} in its TMPDIR (the run directory is removed on success)")
    print(f"PASS: {report['fault']}: {report.get('observed', '')}")


if __name__ == "__main__":
    main()
