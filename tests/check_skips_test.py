"""CI's skip policy (scripts/check_skips.py): it prints every skip's reason and fails on
any but the documented one."""
from scripts import check_skips

_REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.a_test" name="test_runs"/>
{cases}
</testsuite></testsuites>"""


def _report(tmp_path, *reasons):
  cases = "".join(f'<testcase classname="tests.b_test" name="test_{k}"><skipped '
                  f'type="pytest.skip" message="{r}">x</skipped></testcase>'
                  for k, r in enumerate(reasons))
  path = tmp_path / "junit.xml"
  path.write_text(_REPORT.format(cases=cases))
  return str(path)


def test_skips_for_the_documented_reason_pass_and_are_listed(tmp_path, capsys):
  path = _report(tmp_path, "shared data set not found at ../shared (present in CI)")
  assert check_skips.main(["check_skips", path]) == 0
  out = capsys.readouterr().out
  assert "skipped 1 test(s): shared data set not found" in out


def test_a_skip_for_a_part_ci_can_install_fails_and_says_which(tmp_path, capsys):
  path = _report(tmp_path, "shared data set not found at x",
                 "Orthanc is not installed (Debian: apt-get install orthanc)")
  assert check_skips.main(["check_skips", path]) == 1
  err = capsys.readouterr().err
  assert "1 test(s) skipped for a reason CI must not have" in err
  assert "tests.b_test::test_1: Orthanc is not installed" in err
