"""The strategy advisor: profile a dataset cheaply, then recommend how to adapt a pretrained network.

Example:
    >>> from medtl.advisor import advise
    >>> advice = advise("chest_xray/")
    >>> advice.strategy, advice.confidence
    ('feature_extraction', 'high')
    >>> print(advice.explain())
"""

from __future__ import annotations

from medtl.advisor._advise import advise
from medtl.advisor._measure import BNStatsRecorder, imagenet_entropy, probe_transferability
from medtl.advisor._profile import Profile
from medtl.advisor.rules import STRATEGIES, Advice, decide, domain_gap, estimate_minutes

__all__ = [
    "STRATEGIES",
    "Advice",
    "BNStatsRecorder",
    "Profile",
    "advise",
    "decide",
    "domain_gap",
    "estimate_minutes",
    "imagenet_entropy",
    "probe_transferability",
]
