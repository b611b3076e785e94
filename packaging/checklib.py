"""What the repository's check scripts share (packaging/check_*.py, tests/deploy/validate.py):
one `ok` line per check passed, a `FAIL` that stops the run, and the refusal a check raises
when a copy is broken."""

import sys
import tempfile

passed = []


class Refused(Exception):
    pass


def scratch(name):
    """A temporary directory for one run, named after the check."""
    return tempfile.mkdtemp(prefix=f"keygate-{name}-")


def ok(what):
    passed.append(what)
    print(f"  ok  {what}")


def refused(what, check, *args, width=160):
    """Runs a check on a broken copy: it must raise `Refused` (its last line is shown)."""
    try:
        check(*args)
    except Refused as e:
        ok(f"refused: {what} ({str(e).splitlines()[-1][:width]})")
        return
    fail(f"refusal: {what}", "the broken copy was accepted")


def fail(what, detail=""):
    print(f"FAIL  {what}")
    if detail:
        print("      " + str(detail).strip().replace("\n", "\n      "))
    sys.exit(1)
