"""The reward adapter: exact counts in, penalty and keep/drop out."""

from __future__ import annotations

import pytest

from enforcer import rl
from enforcer.v1 import enforcer_pb2 as pb


def stats(**refused: int) -> pb.SandboxStats:
    message = pb.SandboxStats(sandbox="s")
    for kind, count in refused.items():
        getattr(message, kind).refused = count
    return message


def test_no_denials_no_penalty():
    outcome = rl.judge(stats())
    assert (outcome.penalty, outcome.keep, outcome.reasons) == (0.0, True, ())


def test_default_rules_penalise_mistakes_and_drop_breakouts():
    mistake = rl.judge(stats(sendmsg=2))
    assert mistake.keep and mistake.penalty == pytest.approx(0.2)
    breakout = rl.judge(stats(exec=1, connect=1))
    assert not breakout.keep and breakout.penalty == pytest.approx(1.1)
    assert breakout.reasons == ("1 exec denials (drop at 1)",)
    assert rl.judge(stats(), escalated=True).keep is False
    escape = rl.judge(stats(syscall=1))
    assert not escape.keep and escape.reasons == ("1 syscall denials (drop at 1)",)


def test_configurable_per_kind_audited_and_capped():
    config = rl.PenaltyConfig(rules={"connect": rl.KindRule(penalty=2.0)}, count_audited=False, max_penalty=3.0)
    message = stats(connect=5)
    message.connect.audited = 100
    outcome = rl.judge(message, config)
    assert outcome.counts["connect"] == 5 and outcome.penalty == 3.0 and outcome.keep
    with pytest.raises(ValueError, match="unknown denial kinds"):
        rl.PenaltyConfig(rules={"dnss": rl.KindRule()})
