"""CI's skip policy: prints why tests skipped, and fails on any reason CI must not have.

Usage (.ci/run does this):
  scripts/test.sh --junitxml=REPORT.xml; python scripts/check_skips.py REPORT.xml

A test that needs a real part CI can install (Orthanc, Chromium, DCMTK, TensorFlow,
Beam, pynetdicom) must run in CI: skipping is not passing. The only documented reason
to skip there is the one a user's clone has too: no ../shared data set. Standard library
only.
"""
import collections
import sys
import xml.etree.ElementTree as ET

# Reasons a test may skip in CI (substrings of the skip message).
ALLOWED = ("shared data set not found",)


def skips(junit_path: str):
  """(test id, reason) of every skipped test in a pytest JUnit XML report."""
  for case in ET.parse(junit_path).getroot().iter("testcase"):
    skipped = case.find("skipped")
    if skipped is not None:
      reason = skipped.get("message") or (skipped.text or "").strip() or "no reason given"
      yield f"{case.get('classname')}::{case.get('name')}", reason


def main(argv) -> int:
  if len(argv) != 2:
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2
  found = list(skips(argv[1]))
  by_reason = collections.Counter(reason for _, reason in found)
  for reason, count in sorted(by_reason.items()):
    print(f"[cxr-edge] skipped {count} test(s): {reason}")
  refused = [(test, reason) for test, reason in found
             if not any(allowed in reason for allowed in ALLOWED)]
  if refused:
    print(f"[cxr-edge] FAILED: {len(refused)} test(s) skipped for a reason CI must not "
          "have (install the part, or fix the test):", file=sys.stderr)
    for test, reason in refused:
      print(f"  {test}: {reason}", file=sys.stderr)
    return 1
  print(f"[cxr-edge] skip policy: {len(found)} skip(s), all for documented reasons")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
