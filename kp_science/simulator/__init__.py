"""Study simulator with planted ground truth (docs/architecture.md §6). No Dagster here."""

from kp_science.simulator.study import (
    SIMULATION_MARKER,
    SimulationOptions,
    is_simulated_study,
    simulate_study,
    simulated_voxel_size,
    simulation_target_problem,
)

__all__ = [
    "SIMULATION_MARKER",
    "SimulationOptions",
    "is_simulated_study",
    "simulate_study",
    "simulated_voxel_size",
    "simulation_target_problem",
]
