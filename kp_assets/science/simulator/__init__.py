"""Study simulator with planted ground truth (DESIGN §6). No Dagster here."""

from kp_assets.science.simulator.study import SimulationOptions, simulate_study

__all__ = ["SimulationOptions", "simulate_study"]
