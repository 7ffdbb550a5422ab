"""The kernel matrix's rule, run on each kernel: a test that needs a feature
the kernel lacks is skipped with its reason, unless the kernel is expected to
offer the feature (tests/kernels/features.py): then the skip is a failure."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.harness.env import REPO, patience

pytestmark = pytest.mark.kernel  # the outcome depends on the kernel: runs on each (make test-kernels)

NEEDS = {  # a feature -> a test that needs it
    "bpf_lsm": "tests/e2e/test_exec.py::test_the_lsm_mode_can_be_required",
    "no_bpf_lsm": "tests/e2e/test_exec.py::test_requiring_the_lsm_mode_without_bpf_lsm_is_refused_with_one_sentence",
}


def run_pytest(test: str, offers: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--require-bpf", test],
                          env={**os.environ, "ENFORCER_TEST_KERNEL_OFFERS": offers, "COLUMNS": "400"}, cwd=REPO,
                          capture_output=True, text=True, timeout=patience(120))


def test_a_skip_is_a_failure_where_the_kernel_should_offer_the_feature():
    from tests.kernels import features

    feature = next(name for name in NEEDS if features.missing(name))  # one of the two is always missing
    skipped = run_pytest(NEEDS[feature], offers="")
    assert skipped.returncode == 0, skipped.stdout
    assert "1 skipped" in skipped.stdout and f"needs {feature}" in skipped.stdout

    failed = run_pytest(NEEDS[feature], offers=feature)
    assert failed.returncode == 1, failed.stdout
    # (it fails in its set-up, before any fixture: pytest counts that an error)
    assert f"this kernel is expected to offer {feature}" in failed.stdout and "1 error" in failed.stdout


def test_an_unknown_declared_feature_is_refused():
    done = run_pytest(NEEDS["bpf_lsm"], offers="bpf_lsn")
    assert done.returncode != 0
    assert "ENFORCER_TEST_KERNEL_OFFERS: unknown feature(s) ['bpf_lsn']" in done.stdout + done.stderr
