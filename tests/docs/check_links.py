#!/usr/bin/env python3
"""The repository's docs link to files and headings that exist: every relative Markdown link in
README.md, docs/*.md and the tools' READMEs names a file of the repository, and a #fragment
names a heading of that file (GitHub's anchor rule: lower case, punctuation dropped, spaces to
dashes, -1, -2 for repeats). Usage: check_links.py REPO_ROOT"""
import collections
import functools
import glob
import os
import re
import sys

if len(sys.argv) != 2 or not os.path.isfile(os.path.join(sys.argv[1], "README.md")):
    sys.exit("usage: check_links.py REPO_ROOT (the directory holding README.md)")
ROOT = sys.argv[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.*?) *#*$")


@functools.lru_cache(maxsize=None)  # a file is read once, however many links name it
def anchors(path):
    seen = collections.Counter()
    out = set()
    in_code = False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = None if in_code else HEADING.match(line.rstrip("\n"))
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        out.add(slug if seen[slug] == 0 else "%s-%d" % (slug, seen[slug]))
        seen[slug] += 1
    return out


def main():
    docs = [os.path.join(ROOT, "README.md")] + sorted(
        glob.glob(os.path.join(ROOT, "docs", "*.md")) +
        glob.glob(os.path.join(ROOT, "tools", "*", "README.md")) +
        glob.glob(os.path.join(ROOT, "examples", "**", "*.md"), recursive=True))
    broken = []
    links = 0
    for doc in docs:
        for n, line in enumerate(open(doc, encoding="utf-8"), 1):
            for link in LINK.findall(line):
                if re.match(r"^[a-z]+:", link):  # http:, https:, mailto:
                    continue
                links += 1
                path, _, fragment = link.partition("#")
                target = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
                where = "%s:%d: %s" % (os.path.relpath(doc, ROOT), n, link)
                if not os.path.exists(target):
                    broken.append(where + " (no such file)")
                elif fragment and target.endswith(".md") and fragment not in anchors(target):
                    broken.append(where + " (no such heading in %s)" % os.path.relpath(target, ROOT))
    for b in broken:
        print("broken link: " + b)
    if broken or links == 0:
        sys.exit("%d of %d links broken" % (len(broken), links) if broken else "no links found")
    print("%d links in %d files resolve" % (links, len(docs)))


main()
