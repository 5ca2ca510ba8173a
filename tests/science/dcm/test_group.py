"""The group DCM (kp_science.dcm.group) on synthetic first-level fits."""

from functools import cache

import numpy as np
import pandas as pd
import pytest

from kp_science.dcm import GroupDCMConfig, group_dcm, simulate_first_level
from kp_science.dcm.group import contrast_posterior
from kp_science.dcm.reduction import free_energy_change

# --- the study designs --------------------------------------------------------------------------


@cache
def _synthetic(n: int = 24, seed: int = 2):
    return simulate_first_level(
        n,
        seed,
        change={"A[vmpfc->amygdala]": 0.15},
        baseline={"B[emotional][amygdala->vmpfc]": -0.25},
    )


def test_group_designs_recover_planted_effects():
    fits, params, clinical = _synthetic()
    result = group_dcm(fits, params, clinical)
    effects = result.effects.set_index(["analysis", "covariate", "parameter"])
    assert result.excluded.empty
    # run to the maximum, covariances marginal over the random-effects precisions
    assert all(a.peb.method == "exact" and a.peb.converged for a in result.analyses.values())
    assert set(effects.index.get_level_values("analysis")) == {"longitudinal", "baseline"}
    # 2 A connections between regions + 2 B parameters (self-connections are left out by
    # default) × (4 covariates + 2 within-arm slopes)
    assert len(effects) == 2 * 4 * 6
    assert not any(
        "amygdala->amygdala" in p or "vmpfc->vmpfc" in p
        for p in effects.index.get_level_values("parameter")
    )
    change = effects.loc[("longitudinal", "caps5_improvement", "A[vmpfc->amygdala]")]
    assert change["peb_mean"] > 0 and change["mean"] > 0 and change["Pp"] > 0.9
    base = effects.loc[("baseline", "caps5_improvement", "B[emotional][amygdala->vmpfc]")]
    assert base["peb_mean"] < 0 and base["mean"] < 0 and base["Pp"] > 0.9
    # the group means are those simulated (A[amygdala->vmpfc] 0.3 at baseline)
    mean = effects.loc[("baseline", "mean", "A[amygdala->vmpfc]")]
    assert mean["peb_mean"] == pytest.approx(0.3, abs=0.05)
    assert np.all((effects["Pp"] >= 0) & (effects["Pp"] <= 1))
    assert (effects["n_participants"] == 24).all()


def test_non_converged_and_incomplete_participants_are_listed():
    fits, params, clinical = _synthetic()
    fits = fits.copy()
    fits.loc[(fits.participant_id == "sub-03") & (fits.session == "post"), "converged"] = False
    fits = fits[~((fits.participant_id == "sub-05") & (fits.session == "post"))]
    clinical = clinical.copy()
    clinical.loc[clinical.participant_id == "sub-07", "caps5_improvement"] = np.nan
    result = group_dcm(fits, params, clinical)
    excluded = result.excluded.set_index(["analysis", "participant_id"])["reason"]
    assert "did not converge" in excluded[("longitudinal", "sub-03")]
    assert "no first-level DCM of session post" in excluded[("longitudinal", "sub-05")]
    assert "improvement" in excluded[("longitudinal", "sub-07")]
    assert "improvement" in excluded[("baseline", "sub-07")]
    assert ("baseline", "sub-03") not in excluded.index  # its pre fit converged
    assert len(result.analyses["longitudinal"].participants) == 21
    assert len(result.analyses["baseline"].participants) == 23


def test_different_model_structures_are_an_error():
    fits, params, clinical = _synthetic()
    fits = fits.copy()
    odd = fits.participant_id.isin(["sub-04", "sub-09"])
    fits.loc[odd, "free_parameters"] = pd.Series(
        [list(f)[:-1] for f in fits.loc[odd, "free_parameters"]], index=fits.index[odd]
    )
    with pytest.raises(ValueError, match="sub-04, sub-09"):
        group_dcm(fits, params, clinical)
    params = params.copy()
    params.loc[
        (params.participant_id == "sub-11") & (params.parameter == "B[emotional][vmpfc->amygdala]"),
        "prior_variance",
    ] = 0.5
    with pytest.raises(ValueError, match="sub-11"):
        group_dcm(*_synthetic()[:1], params, clinical)


def test_too_few_participants_is_an_error():
    fits, params, clinical = simulate_first_level(5, seed=1)
    fits = fits.copy()
    fits.loc[fits.participant_id.isin(["sub-01", "sub-02"]), "converged"] = False
    with pytest.raises(ValueError, match="3 participants are fewer than the 4 second-level"):
        group_dcm(fits, params, clinical, GroupDCMConfig(analyses=("baseline",)))


def test_group_configuration_errors():
    fits, params, clinical = _synthetic()
    with pytest.raises(ValueError, match="unknown analysis"):
        group_dcm(fits, params, clinical, GroupDCMConfig(analyses=("pooled",)))
    with pytest.raises(ValueError, match="not free parameters"):
        group_dcm(fits, params, clinical, GroupDCMConfig(parameters=("A[x->y]",)))
    two = pd.concat([fits, fits.assign(model="other")])
    with pytest.raises(ValueError, match="choose one"):
        group_dcm(two, params, clinical)
    with pytest.raises(ValueError, match="unknown change method 'ratio'"):
        group_dcm(fits, params, clinical, GroupDCMConfig(change="ratio"))


def test_change_as_difference_or_within_participant_peb():
    """Both ways of forming the change find the planted change effect."""
    fits, params, clinical = _synthetic()
    key = ("longitudinal", "caps5_improvement", "A[vmpfc->amygdala]")
    for change in ("difference", "within_peb"):
        result = group_dcm(fits, params, clinical, GroupDCMConfig(change=change))
        effect = result.effects.set_index(["analysis", "covariate", "parameter"]).loc[key]
        assert effect["peb_mean"] > 0 and effect["Pp"] > 0.9, (change, effect)
        analysis = result.analyses["longitudinal"]
        assert bool(analysis.within) == (change == "within_peb")


def test_within_arm_slope_is_the_contrast_of_improvement_and_interaction():
    fits, params, clinical = _synthetic()
    result = group_dcm(fits, params, clinical)
    effects = result.effects.set_index(["analysis", "covariate", "parameter"])
    peb = result.analyses["baseline"].peb
    p = len(peb.parameters)
    for i, name in enumerate(peb.parameters):
        slope, interaction = peb.Ep[i, 1], peb.Ep[i, 3]
        for arm, code in (("ketamine", 0.5), ("midazolam", -0.5)):
            row = effects.loc[("baseline", f"caps5_improvement[{arm}]", name)]
            assert row["mean"] == pytest.approx(slope + code * interaction, abs=1e-12)
            assert 0.0 <= row["Pp"] <= 1.0
    # a one-hot contrast is the BMR of switching that single effect off
    one = np.zeros(peb.Ep.size)
    one[1 * p + 2] = 1.0  # improvement effect on the third parameter
    _, _, pp = contrast_posterior(peb, one)
    keep = np.ones(peb.Ep.size)
    keep[1 * p + 2] = 0.0
    pE, pC = peb.prior_mean.ravel(order="F"), peb.prior_cov
    rC = pC * np.outer(keep, keep)
    dF = free_energy_change(pE, pC, peb.Ep.ravel(order="F"), peb.Cp, pE * keep, rC)
    assert pp == pytest.approx(1.0 / (1.0 + np.exp(dF)), abs=1e-9)
