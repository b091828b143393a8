"""The rules that ship with perfguard, one small file each; plugins add theirs by entry point."""

from __future__ import annotations

from rules.api import Rule
from rules.builtin.accuracy_drop import AccuracyDrop
from rules.builtin.energy_drift import EnergyDrift
from rules.builtin.latency_drift import LatencyDrift
from rules.builtin.memory_growth import MemoryGrowth
from rules.builtin.slo_breach import SloBreach
from rules.builtin.throughput_drop import ThroughputDrop

BUILTIN_RULES: dict[str, type[Rule]] = {
    rule.name: rule for rule in (LatencyDrift, SloBreach, MemoryGrowth, ThroughputDrop, AccuracyDrop, EnergyDrift)
}
