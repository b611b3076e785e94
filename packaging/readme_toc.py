#!/usr/bin/env python3
"""README.md's table of contents (between <!-- toc --> and <!-- /toc -->), made from its
## and ### headings with GitHub's anchors.

    packaging/readme_toc.py          rewrite the table in README.md
    packaging/readme_toc.py --check  (make test) fail if the table is stale, or if a link
                                     to #anchor or to a file in the repository points nowhere
"""

import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
README = os.path.join(ROOT, "README.md")
START, END = "<!-- toc -->", "<!-- /toc -->"


def headings(text):
    """(level, title, anchor) of each heading outside code blocks."""
    out, seen, fence = [], {}, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        m = None if fence else re.match(r"^(#{1,6}) (.+)$", line)
        if not m:
            continue
        title = m.group(2).strip()
        slug = re.sub(r"[^\w\- ]", "", title.lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.append((len(m.group(1)), title, slug if n == 0 else f"{slug}-{n}"))
    return out


def toc(text):
    lines = []
    for level, title, anchor in headings(text):
        title = title.replace("<", "&lt;").replace(">", "&gt;")
        if title == "Contents":
            continue
        if level == 2:
            lines.append(f"- [{title.replace('`', '')}](#{anchor})")
        elif level == 3:
            lines.append(f"  - [{title.replace('`', '')}](#{anchor})")
    return "\n".join(lines)


def with_toc(text):
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{toc(text)}\n{END}{after}"


def broken_links(text):
    anchors = {a for _, _, a in headings(text)}
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            if not os.path.exists(os.path.join(ROOT, path)):
                problems.append(f"({target}): no file {path}")
        elif anchor not in anchors:
            problems.append(f"({target}): no heading with that anchor")
    return problems


def main():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    if "--check" in sys.argv:
        problems = broken_links(text)
        if with_toc(text) != text:
            problems.append("the table of contents is stale: run packaging/readme_toc.py")
        if problems:
            print("README.md:\n  " + "\n  ".join(problems))
            sys.exit(1)
        links = len(re.findall(r"\]\(", text))
        print(f"README.md: table of contents current, {links} links resolve")
        return
    with open(README, "w", encoding="utf-8") as f:
        f.write(with_toc(text))


if __name__ == "__main__":
    main()
