"""The CI regression gate (``evalkit gate``): statistics, configuration, decisions and reports."""

from evalkit.gate.config import GateConfig, MetricRule, load_config
from evalkit.gate.core import (
    GateReport,
    GateRun,
    MetricVerdict,
    load_run,
    resolve_baseline,
    run_gate,
)
from evalkit.gate.features import SetFeatures, load_set_features
from evalkit.gate.stats import fid_against, paired_bootstrap, paired_set_bootstrap

__all__ = [
    "GateConfig",
    "GateReport",
    "GateRun",
    "MetricRule",
    "MetricVerdict",
    "SetFeatures",
    "fid_against",
    "load_config",
    "load_run",
    "load_set_features",
    "paired_bootstrap",
    "paired_set_bootstrap",
    "resolve_baseline",
    "run_gate",
]
