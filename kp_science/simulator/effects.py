"""Clinical outcomes and the planted imaging parameters of the simulated trial.

Every participant gets an arm, CAPS-5 and MADRS before and after treatment, and per session
a value for every planted parameter. The paper's headline relations (docs/architecture.md §1) are
planted as post − pre changes that depend on CAPS-5 improvement: each change is a signal term
proportional to standardised improvement plus a noise term that is exactly uncorrelated with
it in the sample, scaled so that improvement explains ``r2`` of the change's variance among
the participants where the effect is planted. ``effect_scale`` s scales every planted
correlation: improvement explains s²·``r2``; s = 0 is the null study, where every change is
noise only (and the draw is the same as with s = 1, bar the planting).

Every session also gets each region's hemodynamics (``hemodynamics.transit[dacc]`` …,
:mod:`.hemodynamics`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from kp_science.simulator import hemodynamics
from kp_science.study.protocol import default_vocabulary

# the simulator writes this trial's study: the default protocol's names
ARMS = default_vocabulary().arms


@dataclass(frozen=True)
class PlantedEffect:
    """A planted relation between CAPS-5 improvement and one parameter.

    ``parameter``: truth parameter name; ``direction``: +1 if larger improvement means a
    larger value; ``arms``: arms in which it is planted (elsewhere the value is noise of the
    same spread); ``sd``: total standard deviation across participants; ``r2``: share of
    variance explained by improvement where planted; ``ketamine_gain``: for effects planted in
    both arms, how much steeper the slope is under ketamine (slope ∝ 1 ± gain);
    ``baseline``: the relation is in the pre-treatment value, not the change.
    """

    parameter: str
    direction: float
    arms: tuple[str, ...]
    sd: float
    r2: float
    ketamine_gain: float = 0.0
    baseline: bool = False


HEADLINE_EFFECTS: tuple[PlantedEffect, ...] = (
    # improvement ~ increased vmPFC→amygdala coupling during emotional faces (gPPI), stronger
    # on ketamine (paper: β = 2.90, drug interaction β = 0.86). Spread 1.0: the faces run's
    # DCM responses make the gPPI estimate noisy, and a smaller spread is not reliably selected
    PlantedEffect("faces.gppi.vmpfc->amygdala.emotional", +1, ARMS, 1.0, 0.5, ketamine_gain=0.5),
    # improvement after ketamine ~ decreased dACC conflict-regulation activity (β = −2.82)
    PlantedEffect("conflict.activation.dacc.regulation", -1, ("ketamine",), 1.8, 0.5),
    # improvement after ketamine ~ increased resting vmPFC–anterior insula FC (β = 0.60)
    PlantedEffect("rest.fc.vmpfc~insula_ant", +1, ("ketamine",), 0.3, 0.5),
    # DCM: improvement (either drug) ~ decreased emotional modulation of amygdala→vmPFC
    PlantedEffect("dcm.B[emotional][amygdala->vmpfc]", -1, ARMS, 0.3, 0.55),
    # DCM: increased top-down inhibition vmPFC→amygdala in ketamine improvers
    PlantedEffect("dcm.A[vmpfc->amygdala]", -1, ("ketamine",), 0.35, 0.55),
    # DCM: low baseline inhibition (a less negative pre value) predicts improvement on ketamine
    PlantedEffect("dcm.A[vmpfc->amygdala]", +1, ("ketamine",), 0.35, 0.55, baseline=True),
)
# Sizes of the DCM effects (Hz): between-participant SDs of first-level DCM connections in
# emotion studies are of the order of 0.1–0.3 Hz. One faces run resolves spreads of 0.3 Hz (B)
# and 0.35 Hz (A) with a faces drive of 2 (amygdala block responses peak at ≈ 1.9 % signal)
# and 200-volume runs (Spearman ρ of estimate vs planted ≈ 0.85 on the region-level path);
# smaller spreads drown in the vmPFC fluctuation that carries the planted gPPI, which the
# deterministic DCM cannot explain. The DCM relations explain 55 % (the others 45–50 %): the
# group PEB's within-ketamine slopes rest on ~10 participants.
# A[vmpfc->amygdala] stays inhibitory on average (mean −0.25); :func:`stabilise_loop` adjusts
# nuisance connections in the sessions (≈ 14 %) whose draws would destabilise the loop.
# pre-treatment population mean and between-participant sd of every parameter; post values
# are pre + planted change (headline parameters) or pre + test–retest noise (the rest)
BASELINE: dict[str, tuple[float, float]] = {
    "dcm.A[amygdala->amygdala]": (0.0, 0.05),  # log scale: −0.5 Hz, time constant 2 s
    # vmPFC integrates more slowly than the amygdala (prefrontal cortex sits high in the
    # hierarchy of intrinsic timescales, Murray et al. 2014 Nat Neurosci 17:1661): −0.5 on
    # the log scale is a self-decay of 0.30 Hz, time constant 3.3 s. The lag of vmPFC behind
    # the amygdala is what lets a DCM tell vmPFC→amygdala feedback from amygdala
    # self-inhibition (with equal 2 s time constants they are nearly confounded).
    "dcm.A[vmpfc->vmpfc]": (-0.5, 0.05),
    # forward gain matched to the slower vmPFC decay so vmPFC's response keeps its size
    # (steady-state vmPFC/amygdala ratio 0.2/0.30 = 0.67)
    "dcm.A[amygdala->vmpfc]": (0.20, 0.05),
    "dcm.A[vmpfc->amygdala]": (-0.25, 0.0),  # spread comes from the baseline effect
    "dcm.B[emotional][amygdala->vmpfc]": (0.35, 0.2),
    "dcm.B[emotional][vmpfc->amygdala]": (-0.10, 0.06),
    "dcm.C[faces][amygdala]": (2.0, 0.2),
    "faces.gppi.vmpfc->amygdala.emotional": (0.3, 0.15),
    "conflict.activation.dacc.regulation": (1.0, 0.25),
    "conflict.activation.dacc.monitoring": (1.2, 0.3),
    "rest.fc.vmpfc~insula_ant": (0.25, 0.08),
}
RETEST_SD = 0.25  # test–retest noise of non-headline parameters, as a fraction of their sd

CORRELATION_LIMITS = (-0.4, 0.85)
# The amygdala–vmPFC loop must stay stable with emotional faces on and off: the product of
# the two connections may use at most this share of the product of the self-decay rates
# (the 2×2 neuronal Jacobian's determinant stays ≥ 1 − MAX_LOOP_GAIN of its open-loop value).
MAX_LOOP_GAIN = 0.4


@dataclass(frozen=True)
class PlantedStudy:
    """What the simulator plants: clinical table, long parameter table, achieved R²."""

    clinical: pd.DataFrame  # participant_id, arm, caps5_pre, caps5_post, madrs_pre, madrs_post
    parameters: pd.DataFrame  # participant_id, session, parameter, value
    achieved_r2: dict[str, float]


def participant_ids(n: int) -> list[str]:
    """BIDS labels sub-01 … sub-NN (zero-padded to at least two digits)."""
    width = max(2, len(str(n)))
    return [f"sub-{i:0{width}d}" for i in range(1, n + 1)]


def simulate_clinical(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Arms split evenly at random; CAPS-5 (0–80) and MADRS (0–60) before and after."""
    arm = np.empty(n, dtype=object)
    order = rng.permutation(n)
    arm[order[: (n + 1) // 2]] = "ketamine"
    arm[order[(n + 1) // 2 :]] = "midazolam"
    caps_pre = np.clip(np.round(rng.normal(40, 8, n)), 26, 70)
    planned = np.where(arm == "ketamine", rng.normal(16, 9, n), rng.normal(7, 9, n))
    caps_post = np.clip(np.round(caps_pre - planned), 0, 80)
    madrs_pre = np.clip(np.round(rng.normal(30, 6, n)), 18, 50)
    madrs_drop = 0.55 * (caps_pre - caps_post) + rng.normal(0, 4, n)
    madrs_post = np.clip(np.round(madrs_pre - madrs_drop), 0, 60)
    return pd.DataFrame(
        {
            "participant_id": participant_ids(n),
            "arm": arm.astype(str),
            "caps5_pre": caps_pre.astype(int),
            "caps5_post": caps_post.astype(int),
            "madrs_pre": madrs_pre.astype(int),
            "madrs_post": madrs_post.astype(int),
        }
    )


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def plant_values(
    effect: PlantedEffect,
    improvement: np.ndarray,
    arm: np.ndarray,
    effect_scale: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Zero-mean values (n,) of one effect: signal ∝ improvement where planted, plus noise.

    In the planted arms the noise is made orthogonal to improvement and to the signal in the
    sample, so the in-sample R² of the value on improvement is exactly
    ``effect_scale² · effect.r2`` (0 < effect_scale ≤ 1). ``effect_scale`` 0 returns the
    unplanted draw: noise only, the same random numbers.
    """
    n = len(improvement)
    values = rng.normal(0.0, effect.sd, n)
    if effect_scale == 0:
        return values - values.mean()
    scope = np.isin(arm, effect.arms)
    if scope.sum() < 3:  # too few participants to plant a relation
        return values - values.mean()
    z = _standardise(improvement[scope])
    slope = 1.0 + effect.ketamine_gain * np.where(arm[scope] == "ketamine", 1.0, -1.0)
    signal = _standardise(z * slope) * effect.direction
    noise = values[scope]
    design = np.column_stack([np.ones(scope.sum()), z, signal])
    noise = _standardise(noise - design @ np.linalg.lstsq(design, noise, rcond=None)[0])
    # with an arm-dependent slope the signal is not a multiple of z; choose the noise weight
    # so that improvement itself explains exactly r2 of the variance in the sample
    c = np.corrcoef(signal, z)[0, 1] ** 2
    noise_weight = np.sqrt(max(c / (effect_scale**2 * effect.r2) - 1.0, 0.0))
    combined = _standardise(signal + noise_weight * noise)
    values[scope] = effect.sd * combined
    values[~scope] -= values[~scope].mean() if (~scope).any() else 0.0
    return values


def stabilise_loop(values: dict[str, np.ndarray]) -> None:
    """Keep the amygdala–vmPFC loop of every session stable and within the balloon model's
    range, in place.

    The neuronal Jacobian [[−σ₁, a₁₂], [a₂₁, −σ₂]] (σ = ½·e^{A_ii}) is stable while the loop
    gain a₁₂·a₂₁ / σ₁σ₂ stays below 1; with emotional faces on, a₁₂ and a₂₁ gain their B
    modulations. Two rules, applied to parameters without a planted effect so that the
    planted (headline) values and their R² are untouched (the truth table holds the
    adjusted values):

    - first, A[amygdala->vmpfc] is raised to −B[emotional][amygdala->vmpfc] if needed, so the
      forward connection stays excitatory with emotional faces on: a strongly negative
      forward drive pushes vmPFC far below rest, where the balloon model fails;
    - then the loop gain is held at or below :data:`MAX_LOOP_GAIN` in both conditions, by
      lowering A[amygdala->vmpfc] (without emotional faces) or B[emotional][vmpfc->amygdala]
      (with);
    - where the two would conflict — excitatory feedback and a strongly negative planted
      modulation, so that the forward connection the first rule needs makes the loop gain
      too high (≈ 0.6 % of sessions) — vmPFC's self-decay A[vmpfc->vmpfc] is raised first,
      just enough for both to hold. (Lowering the forward connection instead left it
      inhibitory with emotional faces on, and with participant-specific hemodynamics a few
      such sessions drove the balloon model's flow to zero.)
    """
    a12 = values["dcm.A[vmpfc->amygdala]"]
    b21 = values["dcm.B[emotional][amygdala->vmpfc]"]
    needed = np.maximum(-b21, 0.0)  # the forward connection rule 1 asks for
    scale = MAX_LOOP_GAIN * 0.25
    with np.errstate(divide="ignore", invalid="ignore"):
        # log(σ1σ2/0.25) that lets a12·needed sit at the gain limit
        room = np.where(a12 * needed > 0, np.log(a12 * needed / scale), -np.inf)
    vmpfc = np.maximum(values["dcm.A[vmpfc->vmpfc]"], room - values["dcm.A[amygdala->amygdala]"])
    values["dcm.A[vmpfc->vmpfc]"] = vmpfc
    limit = scale * np.exp(values["dcm.A[amygdala->amygdala]"] + vmpfc)
    a21 = np.maximum(values["dcm.A[amygdala->vmpfc]"], -b21)
    with np.errstate(divide="ignore", invalid="ignore"):
        a21 = np.where(a12 > 0, np.minimum(a21, limit / a12), a21)
        forward = a21 + b21
        b12 = values["dcm.B[emotional][vmpfc->amygdala]"]
        bound = limit / forward - a12
    b12 = np.where(forward > 0, np.minimum(b12, bound), b12)
    values["dcm.A[amygdala->vmpfc]"] = a21
    values["dcm.B[emotional][vmpfc->amygdala]"] = b12


def simulate_parameters(
    clinical: pd.DataFrame, effect_scale: float, rng: np.random.Generator
) -> PlantedStudy:
    """Per participant × session value of every planted parameter (long table); the
    headline effects are planted with correlations scaled by ``effect_scale`` (0: none)."""
    n = len(clinical)
    improvement = (clinical["caps5_pre"] - clinical["caps5_post"]).to_numpy(float)
    arm = clinical["arm"].to_numpy()
    pre = {name: mean + sd * rng.standard_normal(n) for name, (mean, sd) in BASELINE.items()}
    post = {
        name: pre[name] + RETEST_SD * sd * rng.standard_normal(n)
        for name, (_, sd) in BASELINE.items()
    }
    for effect in HEADLINE_EFFECTS:
        values = plant_values(effect, improvement, arm, effect_scale, rng)
        if effect.baseline:
            pre[effect.parameter] = pre[effect.parameter] + values
            post[effect.parameter] = post[effect.parameter] + values
        else:
            post[effect.parameter] = pre[effect.parameter] + values
    # drawn last, so the other parameters' draws do not depend on the hemodynamic model
    for name, values in hemodynamics.draw_hemodynamics(n, rng).items():
        pre[name] = values
        post[name] = values + RETEST_SD * hemodynamics.parameter_sd(name) * rng.standard_normal(n)
    for table in (pre, post):
        for name in list(table):
            if name.startswith("rest.fc."):
                table[name] = np.clip(table[name], *CORRELATION_LIMITS)
        stabilise_loop(table)
    achieved = {}
    for effect in HEADLINE_EFFECTS:
        scope = np.isin(arm, effect.arms)
        key = f"{effect.parameter}{' (baseline)' if effect.baseline else ' (change)'}"
        planted = (
            pre[effect.parameter]
            if effect.baseline
            else (post[effect.parameter] - pre[effect.parameter])
        )
        achieved[key] = (
            float(np.corrcoef(planted[scope], improvement[scope])[0, 1] ** 2)
            if scope.sum() > 2
            else float("nan")
        )
    rows = [
        (pid, session, name, float(values[i]))
        for session, table in (("pre", pre), ("post", post))
        for name, values in sorted(table.items())
        for i, pid in enumerate(clinical["participant_id"])
    ]
    parameters = pd.DataFrame(rows, columns=["participant_id", "session", "parameter", "value"])
    parameters = parameters.sort_values(["participant_id", "session", "parameter"], kind="stable")
    return PlantedStudy(clinical, parameters.reset_index(drop=True), achieved)


def effects_description() -> list[dict]:
    """The planted effects as plain dicts (for simulation.json)."""
    return [asdict(e) for e in HEADLINE_EFFECTS]


def parameter_distributions() -> dict[str, dict[str, float]]:
    """Pre-treatment mean and between-participant sd of every parameter, and the test–retest
    sd (fraction of that sd) of non-headline ones (for simulation.json); hemodynamic ones
    also give the share of their variance common to a participant's regions."""
    distributions = {
        name: {"mean": mean, "sd": sd, "retest_sd_fraction": RETEST_SD}
        for name, (mean, sd) in BASELINE.items()
    }
    for name in hemodynamics.parameter_names():
        distributions[name] = {
            "mean": 0.0,
            "sd": hemodynamics.parameter_sd(name),
            "participant_share": hemodynamics.PARTICIPANT_SHARE,
            "retest_sd_fraction": RETEST_SD,
        }
    return distributions
