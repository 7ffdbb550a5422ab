"""Turn a sandbox's exact denial counts into what an RL trainer uses: a reward
penalty and a keep/drop decision for the trajectory.

The agent in the sandbox only ever sees EPERM (or its process killed); this
signal goes to the trainer alone, so the policy being trained cannot learn to
probe the enforcer through it.

    summary = enf.stats("rollout-17", reset=True)   # exact, since the last reset
    outcome = rl.judge(summary)                      # or rl.judge(summary, rl.PenaltyConfig(...))
    reward -= outcome.penalty
    if not outcome.keep: drop the trajectory
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from enforcer.kinds import BY_NAME, COUNTED

KINDS = COUNTED  # the kinds a summary counts


@dataclass(frozen=True)
class KindRule:
    penalty: float = 0.0            # subtracted per denial of this kind
    drop_after: int | None = None   # drop the trajectory at this many denials of this kind


def _default_rules() -> dict[str, KindRule]:
    # Each kind's default is in enforcer.kinds: network mistakes cost a little,
    # what a breakout looks like drops the trajectory.
    return {name: KindRule(penalty=BY_NAME[name].penalty, drop_after=BY_NAME[name].drop_after) for name in KINDS}


@dataclass(frozen=True)
class PenaltyConfig:
    rules: dict[str, KindRule] = field(default_factory=_default_rules)
    count_audited: bool = True      # in audit mode the attempts count the same
    max_penalty: float | None = None  # cap on the total penalty
    drop_when_escalated: bool = True  # a sandbox quarantined or frozen by its policy

    def __post_init__(self) -> None:
        unknown = set(self.rules) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown denial kinds {sorted(unknown)} (expected some of {', '.join(KINDS)})")


@dataclass(frozen=True)
class TrajectoryOutcome:
    penalty: float
    keep: bool
    counts: dict[str, int]           # denials by kind that were counted
    reasons: tuple[str, ...] = ()    # why the trajectory is dropped


def judge(stats: Any, config: PenaltyConfig | None = None, escalated: bool = False) -> TrajectoryOutcome:
    """``stats``: a SandboxStats (from ``Enforcer.stats``). ``escalated``: the
    sandbox's AppliedPolicy says quarantined or frozen."""
    config = config or PenaltyConfig()
    counts = {}
    penalty = 0.0
    reasons = []
    for kind in KINDS:
        kind_stats = getattr(stats, kind)
        count = int(kind_stats.refused) + (int(kind_stats.audited) if config.count_audited else 0)
        counts[kind] = count
        rule = config.rules.get(kind, KindRule())
        penalty += rule.penalty * count
        if rule.drop_after is not None and count >= rule.drop_after:
            reasons.append(f"{count} {kind} denials (drop at {rule.drop_after})")
    if escalated and config.drop_when_escalated:
        reasons.append("the sandbox's escalation fired")
    if config.max_penalty is not None:
        penalty = min(penalty, config.max_penalty)
    return TrajectoryOutcome(penalty=penalty, keep=not reasons, counts=counts, reasons=tuple(reasons))
