"""The kernel matrix's watchdog (tests/kernels/watch.py): a run that stops
making progress is killed and named, a kernel's lockup reports are found."""

from __future__ import annotations

import os
import sys
import time

from tests.kernels import report, watch

SOFT_LOCKUP = """\
[  100.100000] veth0: link up
[  152.289047] watchdog: BUG: soft lockup - CPU#0 stuck for 67s! [python:135]
[  152.290054] NMI backtrace for cpu 1
[  152.290113] CPU: 1 PID: 134 Comm: python Not tainted 6.1.0-57-amd64 #1  Debian 6.1.192-3
[  152.290139] RIP: 0010:bpf_lsm_socket_create+0x0/0x10
[  152.290276] Call Trace:
[  152.290296]  <TASK>
[  152.290305]  security_socket_create+0x40/0x60
"""  # (from the 6.1 VM under qemu's multi-threaded TCG, issue 14)


def test_a_run_whose_progress_stops_is_killed_and_said_hung(tmp_path):
    progress = tmp_path / "progress"
    started = time.monotonic()
    outcome = watch.run_watched([sys.executable, "-c", "import time; time.sleep(120)"], dict(os.environ),
                                tmp_path, progress, stall_seconds=3, total_seconds=60)
    assert time.monotonic() - started < 30
    assert outcome.status == -9 and outcome.hang and "no test started or ended" in outcome.hang


def test_a_run_that_makes_progress_is_left_alone_until_its_total_limit(tmp_path):
    progress = tmp_path / "progress"
    busy = (f"import time\nfor i in range(4):\n    open({str(progress)!r}, 'a').write('1 started t\\n')\n"
            "    time.sleep(1.5)\n")
    outcome = watch.run_watched([sys.executable, "-c", busy], dict(os.environ), tmp_path, progress,
                                stall_seconds=4, total_seconds=60)
    assert (outcome.status, outcome.hang) == (0, None)
    outcome = watch.run_watched([sys.executable, "-c", busy + "time.sleep(60)\n"], dict(os.environ), tmp_path,
                                progress, stall_seconds=30, total_seconds=5)
    assert outcome.status == -9 and outcome.hang and "its limit" in outcome.hang


def test_the_running_test_is_the_one_started_and_not_finished(tmp_path):
    progress = tmp_path / "progress"
    assert watch.running_test(progress) is None
    progress.write_text("1 started a.py::one\n2 finished a.py::one\n3 started b.py::two\n4 fin")
    assert watch.running_test(progress) == "b.py::two"
    progress.write_text("1 started a.py::one\n2 finished a.py::one\n3 finished session\n")
    assert watch.running_test(progress) is None


def test_lockup_reports_are_kept_with_their_stacks():
    trouble = watch.kernel_trouble(SOFT_LOCKUP)
    assert trouble[0].endswith("[python:135]") and "security_socket_create" in trouble[-1]
    assert not watch.kernel_trouble("[ 1.0] veth0: link up\n[ 2.0] random: crng init done\n")
    for line in ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
                 "rcu: INFO: rcu_preempt self-detected stall on CPU",  # seen in the 6.1 VM
                 "INFO: task python:812 blocked for more than 300 seconds.",
                 "Kernel panic - not syncing: softlockup: hung tasks"):
        assert watch.kernel_trouble(f"[ 3.0] {line}\n"), line


def test_new_host_kernel_lines_are_those_after_the_last_one_seen():
    assert watch.new_lines(["a", "b"], ["a", "b", "c", "d"]) == "c\nd"
    assert watch.new_lines([], ["x"]) == "x"


def test_the_report_names_the_hang_the_running_test_and_the_stacks():
    run = report.KernelRun("debian-6.1-bpf-lsm", 1, 600.0, hang="no test started or ended for 900 s",
                           running="tests/e2e/test_restart.py::test_x",
                           kernel_trouble=watch.kernel_trouble(SOFT_LOCKUP))
    text = report.render([run])
    assert "HUNG: no test started or ended for 900 s" in text
    assert "the test running when it stopped: tests/e2e/test_restart.py::test_x" in text
    assert "soft lockup - CPU#0 stuck for 67s" in text
