"""The confound-cleaning strategy (kp_science.cleaning)."""

from __future__ import annotations

from kp_science.cleaning import CONFOUND_MODELS, EXPANSIONS


def test_confound_models_are_the_expansions_load_confounds_knows():
    assert CONFOUND_MODELS == tuple(EXPANSIONS)
