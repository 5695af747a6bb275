#!/usr/bin/env python3
"""Runs the integration tests: python3 t/run.py [FILTER ...]

Discovers t/test_*.py (unittest). A FILTER selects tests whose file name or
id contains it: `test_errors`, `test_errors.py`, `ErrorsTest.test_missing`.
Prints one line per test and ends with
    integration: N passed, N failed[, N skipped]
Exit status 0 only if nothing failed.
"""

import os
import sys
import time
import unittest

T_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, T_DIR)


def iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def wanted(test, filters):
    if not filters:
        return True
    tid = test.id()
    for f in filters:
        f = os.path.basename(f)
        if f.endswith(".py"):
            f = f[:-3]
        if f in tid:
            return True
    return False


class Result(unittest.TestResult):
    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.passed = self.failed = self.skip_count = 0
        self.t0 = {}
        self.problems = []

    def _line(self, word, test, extra=""):
        start = self.t0.get(test.id())
        took = " (%.2fs)" % (time.monotonic() - start) if start else ""
        self.stream.write("%-5s %s%s%s\n" % (word, test.id(), took, extra))
        self.stream.flush()

    def startTest(self, test):
        super().startTest(test)
        self.t0[test.id()] = time.monotonic()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        self._line("ok", test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.failed += 1
        self._line("FAIL", test)
        self.problems.append(("FAIL", test, self._exc_info_to_string(err, test)))

    def addError(self, test, err):
        super().addError(test, err)
        self.failed += 1
        self._line("ERROR", test)
        self.problems.append(("ERROR", test, self._exc_info_to_string(err, test)))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.skip_count += 1
        self._line("skip", test, "  # " + reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.passed += 1
        self._line("ok", test, "  # expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.failed += 1
        self._line("FAIL", test, "  # unexpected success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.failed += 1
            self._line("FAIL", subtest)
            self.problems.append(("FAIL", subtest, self._exc_info_to_string(err, subtest)))


def main(argv):
    filters = [a for a in argv if not a.startswith("-")]
    loader = unittest.TestLoader()
    discovered = loader.discover(start_dir=T_DIR, pattern="test_*.py", top_level_dir=T_DIR)
    suite = unittest.TestSuite()
    for test in iter_tests(discovered):
        # import errors come back as _FailedTest: always keep them
        if type(test).__name__ == "_FailedTest" or wanted(test, filters):
            suite.addTest(test)
    if suite.countTestCases() == 0:
        print("no tests match %s" % " ".join(filters))
        print("integration: 0 passed, 0 failed")
        return 1

    out = sys.stdout
    result = Result(out)
    start = time.monotonic()
    suite.run(result)
    took = time.monotonic() - start

    for word, test, text in result.problems:
        out.write("\n" + "=" * 70 + "\n%s: %s\n" % (word, test.id()) + "-" * 70 + "\n")
        out.write(text)
    summary = "integration: %d passed, %d failed" % (result.passed, result.failed)
    if result.skip_count:
        summary += ", %d skipped" % result.skip_count
    out.write("\n(%.1fs)\n%s\n" % (took, summary))
    out.flush()
    return 0 if result.failed == 0 and result.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
