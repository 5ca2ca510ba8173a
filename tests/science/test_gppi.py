"""Generalised PPI: deconvolution and the interaction model (kp_science.gppi)."""

import numpy as np
import pandas as pd
import pytest

from kp_science.activation import CONFOUND_PREFIX, clean_design, task_design
from kp_science.gppi import dct_basis, deconvolve, fit_gppi, microtime_hrf
from kp_science.roi_signals import clean_roi_signals
from kp_science.study.protocol import default_vocabulary
from tests.science.simulated_runs import (
    LONG_N,
    REF,
    _confounded_run,
    _first_level_contrasts,
    _first_level_model,
    _nilearn_t_contrasts,
    _run,
    nilearn_cleaned,
)

TASKS = default_vocabulary().tasks

TR, N = 2.0, 120


def _reference_gppi(
    signals, task_regressors, events, confounds, kept, n_volumes, tr, slice_time_ref, contrasts
):
    """fit_gppi as first written: one seed at a time, nilearn clean, run_glm and
    compute_contrast (the slow reference the batched version must equal), with the raw
    confounds in each seed's design."""
    from scipy.signal import fftconvolve

    from kp_science.gppi import RIDGE_GRID, _forward_operator, _ridge_operator

    micro = n_volumes * 16
    names = sorted(events["trial_type"].unique())
    boxcars = np.zeros((micro, len(names)))
    for j, name in enumerate(names):
        for onset, duration in events.loc[
            events.trial_type == name, ["onset", "duration"]
        ].to_numpy(float):
            start = min(max(int(round(onset / (tr / 16))), 0), micro)
            stop = min(max(start + 1, int(round((onset + duration) / (tr / 16)))), micro)
            boxcars[start:stop, j] = 1.0
    basis, _ = _forward_operator(n_volumes, tr, slice_time_ref)
    u, s, vt = _ridge_operator(n_volumes, tr, slice_time_ref, tuple(int(k) for k in kept))
    samples = np.arange(n_volumes) * 16 + min(int(round(slice_time_ref * 16)), 15)
    all_contrasts = {c: {c: 1.0} for c in names} | dict(contrasts)
    tables = []
    for seed in signals.columns:
        y = signals[seed].to_numpy() - signals[seed].mean()
        uty = u.T @ y
        best, best_gcv = None, np.inf
        for lam in RIDGE_GRID * np.mean(s**2):
            shrink = s**2 / (s**2 + lam)
            gcv = len(y) * np.sum((y - u @ (shrink * uty)) ** 2) / (len(y) - shrink.sum()) ** 2
            if gcv < best_gcv:
                best, best_gcv = lam, gcv
        neural = basis @ (vt.T @ (s / (s**2 + best) * uty))
        ppi = fftconvolve(boxcars * neural[:, None], microtime_hrf(tr)[:, None], axes=0)[:micro][
            samples
        ]
        ppi = nilearn_cleaned(ppi, confounds, kept)
        # the confounds as they are, in the design: their columns are whitened with the rest
        # and count in the degrees of freedom
        columns = [c for c in task_regressors.columns if c in names]
        design = np.column_stack(
            [
                task_regressors[columns].to_numpy(),
                confounds.to_numpy()[kept],
                signals[seed].to_numpy(),
                ppi,
                np.ones(len(kept)),
            ]
        )
        columns += [*confounds.columns, "seed", *(f"ppi:{c}" for c in names), "constant"]
        targets = [c for c in signals.columns if c != seed]
        for name, weights in all_contrasts.items():
            if not all(c in names for c in weights):
                continue
            vector = np.array(
                [
                    [
                        weights.get(c.removeprefix("ppi:"), 0.0) if c.startswith("ppi:") else 0.0
                        for c in columns
                    ]
                ]
            )
            _, effect, se, t = _nilearn_t_contrasts(signals[targets].to_numpy(), design, vector)
            tables.append(
                pd.DataFrame(
                    {
                        "seed": seed,
                        "target": targets,
                        "contrast": name,
                        "beta": effect[:, 0],
                        "se": se[:, 0],
                        "t": t[:, 0],
                    }
                )
            )
    return pd.concat(tables, ignore_index=True)


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_gppi_equals_the_per_seed_nilearn_reference(task):
    rng, conditions, confounds, kept, design = _run(task, seed=4)
    mixing = rng.uniform(0.2, 1.0, (design.shape[1], 4))
    signals = pd.DataFrame(
        rng.standard_normal((len(kept), 4)) + design.to_numpy() @ mixing,
        columns=["vmpfc", "amygdala", "dacc", "insula"],
        index=kept,
    )
    args = (signals, design, conditions, confounds, kept, N, TR, 0.5, TASKS[task].contrasts)
    ours, reference = fit_gppi(*args), _reference_gppi(*args)
    pd.testing.assert_frame_equal(
        ours[["seed", "target", "contrast"]], reference[["seed", "target", "contrast"]]
    )
    # betas in units of their standard error: a near-zero beta has no relative precision
    np.testing.assert_allclose((ours.beta - reference.beta) / reference.se, 0, atol=1e-10)
    np.testing.assert_allclose(ours.se, reference.se, rtol=1e-10)
    np.testing.assert_allclose(ours.t, reference.t, rtol=1e-10, atol=1e-10)


def test_deconvolution_recovers_a_smooth_neural_signal():
    rng = np.random.default_rng(1)
    basis = dct_basis(N * 16, N)
    neural = basis[:, 1:25] @ rng.standard_normal(24)
    from scipy.signal import fftconvolve

    bold = fftconvolve(neural, microtime_hrf(TR))[: N * 16][np.arange(N) * 16 + 8]
    bold += 0.02 * bold.std() * rng.standard_normal(N)
    kept = np.arange(N)
    estimate = deconvolve(bold, kept, N, TR, 0.5)
    assert np.corrcoef(estimate, neural)[0, 1] > 0.9


def test_gppi_finds_a_planted_interaction():
    """Target = κ·HRF*(emotional·seed neural) + noise: only seed→target emotional is large."""
    from scipy.signal import fftconvolve

    from kp_science.gppi import condition_boxcars

    rng, conditions, confounds, kept, design = _run("faces", seed=3)
    hrf = microtime_hrf(TR)
    samples = np.arange(N) * 16 + 8
    neural = np.repeat(rng.standard_normal(N * 2), 8)
    seed = fftconvolve(neural, hrf)[: N * 16][samples]
    emotional = condition_boxcars(conditions, N, TR)["emotional"].to_numpy()
    target = 0.8 * fftconvolve(emotional * neural, hrf)[: N * 16][samples]
    signals = pd.DataFrame({"seed": seed, "target": target, "other": np.zeros(N)})
    signals += 0.3 * rng.standard_normal(signals.shape)
    signals = signals.iloc[kept].set_index(pd.Index(kept))
    table = fit_gppi(
        signals, design, conditions, confounds, kept, N, TR, 0.5, TASKS["faces"].contrasts
    ).set_index(["seed", "target", "contrast"])
    assert table.loc[("seed", "target", "emotional"), "t"] > 4
    assert abs(table.loc[("seed", "target", "neutral"), "t"]) < 3
    assert abs(table.loc[("other", "target", "emotional"), "t"]) < 3
    assert len(table) == 3 * 2 * 3  # ordered pairs × (2 conditions + 1 contrast)


@pytest.mark.parametrize("task", ["faces", "conflict"])
def test_gppi_equals_first_level_model_with_confounds_and_scrubbed_volumes(task):
    """Each seed's gPPI model is nilearn's FirstLevelModel given that seed's design with the
    raw regressors — task, the 30 confounds, the seed's percent signal, the interaction
    terms (before any cleaning), a constant — at every volume, and the kept volumes as the
    sample mask: raw ROI means as data, AR(1) noise, percent signal change."""
    from kp_science.gppi import boxcar_matrix, convolve_sample, sample_indices

    _, raw, confounds, kept, _, conditions = _confounded_run(task)
    contrasts = TASKS[task].contrasts
    signals = clean_roi_signals(raw, confounds, kept, TR)
    design = clean_design(task_design(conditions, LONG_N, TR, REF), confounds, kept, TR)
    ours = fit_gppi(signals, design, conditions, confounds, kept, LONG_N, TR, REF, contrasts)

    names, boxcars = boxcar_matrix(conditions, LONG_N, TR)
    neural = deconvolve(signals.to_numpy(), kept, LONG_N, TR, REF)  # (microtime, seeds)
    percent = 100.0 * (raw / raw.iloc[kept].mean() - 1.0)
    weights = {c: {f"ppi:{c}": 1.0} for c in names} | {
        name: {f"ppi:{c}": w for c, w in weights.items()} for name, weights in contrasts.items()
    }
    for i, seed in enumerate(raw.columns):
        ppi = convolve_sample(
            boxcars * neural[:, i : i + 1], microtime_hrf(TR), sample_indices(LONG_N, REF)
        )
        seed_design = pd.concat(
            [
                task_design(conditions, LONG_N, TR, REF).reset_index(drop=True),
                confounds,
                pd.DataFrame(ppi, columns=[f"ppi:{c}" for c in names]).assign(
                    seed=percent[seed].to_numpy(), constant=1.0
                ),
            ],
            axis=1,
        )
        targets = [r for r in raw.columns if r != seed]
        model = _first_level_model(raw[targets], kept, design_matrices=[seed_design])
        assert model.design_matrices_[0].shape == (len(kept), len(names) + 30 + len(names) + 2)
        effect, se, t = _first_level_contrasts(model, weights)
        got = ours[ours.seed == seed]
        for column, name in enumerate(weights):
            row = got[got.contrast == name].set_index("target").loc[targets]
            np.testing.assert_allclose(row["beta"], effect[:, column], rtol=1e-6)
            np.testing.assert_allclose(row["se"], se[:, column], rtol=1e-6)
            np.testing.assert_allclose(row["t"], t[:, column], rtol=1e-6)
    # a design without the confound columns would leave them out of the model: refused
    cleaned_only = design.drop(columns=design.filter(like=CONFOUND_PREFIX).columns)
    with pytest.raises(ValueError, match="0 confound columns for 30 confounds"):
        fit_gppi(signals, cleaned_only, conditions, confounds, kept, LONG_N, TR, REF, contrasts)
