"""The strategy advisor: measure both strategies on the user's own data, extrapolate, recommend.

Example:
    >>> from medtl.advisor import advise
    >>> advice = advise("chest_xray/", pilot_minutes=2)
    >>> advice.strategy, advice.confidence
    ('feature_extraction', 'medium')
    >>> print(advice.explain())
"""

from __future__ import annotations

from medtl.advisor._advise import DEFAULT_PILOT_MINUTES, advise
from medtl.advisor._curve import fit_power_law, paired_difference, power_law, predict_curve
from medtl.advisor._measure import BNStatsRecorder, imagenet_entropy, probe_transferability
from medtl.advisor._profile import Profile
from medtl.advisor.rules import STRATEGIES, Advice, Measured, decide, domain_gap

__all__ = [
    "DEFAULT_PILOT_MINUTES",
    "STRATEGIES",
    "Advice",
    "BNStatsRecorder",
    "Measured",
    "Profile",
    "advise",
    "decide",
    "domain_gap",
    "fit_power_law",
    "imagenet_entropy",
    "paired_difference",
    "power_law",
    "predict_curve",
    "probe_transferability",
]
