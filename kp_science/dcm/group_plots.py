"""Figures of the group DCM effects with their posterior probabilities (PNG bytes): bars
with intervals (:func:`effects_png`) and connectivity diagrams
(:func:`connectivity_diagram_png`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch
from matplotlib.path import Path

from kp_science.figures import figure_png


def effects_png(effects: pd.DataFrame, analysis: str) -> bytes:
    """One panel per covariate of ``analysis``: each connection's averaged effect with a 90 %
    interval (±1.645 sd), shaded by its posterior probability of being present (Pp)."""
    rows = effects[effects["analysis"] == analysis]
    covariates = list(dict.fromkeys(rows["covariate"]))
    figure = Figure(figsize=(3.2 * max(len(covariates), 1), 3.4))
    axes = figure.subplots(1, max(len(covariates), 1), squeeze=False)[0]
    for ax, covariate in zip(axes, covariates, strict=False):
        part = rows[rows["covariate"] == covariate]
        y = np.arange(len(part))
        # Pp from model averaging can exceed 1 by a rounding error
        shade = np.clip(part["Pp"].fillna(0.0).to_numpy(float), 0.0, 1.0)
        colours = [(0.8 * (1 - pp), 0.3, 0.8 * pp) for pp in shade]
        ax.barh(y, part["mean"], xerr=1.645 * part["sd"], color=colours, capsize=2)
        for i, pp in enumerate(part["Pp"]):
            ax.annotate(
                f"Pp {pp:.2f}", (0, i), xytext=(3, -3), textcoords="offset points", fontsize=6
            )
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, part["parameter"], fontsize=6)
        ax.set_title(covariate, fontsize=8)
    figure.suptitle(
        f"group DCM, {analysis}: effects after model reduction (blue = Pp high)", fontsize=8
    )
    figure.tight_layout()
    return figure_png(figure)


# a parameter drawn as an arrow: A[source->target], B[input][source->target], C[input][region]
_CONNECTION = re.compile(r"^A\[([^\[\]]+)->([^\[\]]+)\]$")
_MODULATION = re.compile(r"^B\[([^\[\]]+)\]\[([^\[\]]+)->([^\[\]]+)\]$")
_DRIVING = re.compile(r"^C\[([^\[\]]+)\]\[([^\[\]]+)\]$")
POSITIVE, NEGATIVE, UNSIGNED = "#c0392b", "#2c6fbb", "#7f7f7f"
_NODE_RADIUS = 0.38
PANELS_PER_ROW = 3


@dataclass(frozen=True)
class _Edge:
    """One drawable parameter: its ``field`` ("A", "B[input]", "C[input]"), ``source``
    (None for a driving input), ``target``, effect ``mean`` and ``pp`` (NaN if unknown)."""

    field: str
    source: str | None
    target: str
    mean: float
    pp: float


def _edge(parameter: str, mean: float, pp: float) -> _Edge | None:
    if m := _CONNECTION.match(parameter):
        return _Edge("A", m.group(1), m.group(2), mean, pp)
    if m := _MODULATION.match(parameter):
        return _Edge(f"B[{m.group(1)}]", m.group(2), m.group(3), mean, pp)
    if m := _DRIVING.match(parameter):
        return _Edge(f"C[{m.group(1)}]", None, m.group(2), mean, pp)
    return None


def _node_positions(regions: Sequence[str]) -> dict[str, np.ndarray]:
    """Regions on a circle of radius 1 (two side by side, one in the middle)."""
    n = len(regions)
    if n == 1:
        return {regions[0]: np.zeros(2)}
    start = np.pi if n == 2 else np.pi / 2
    angles = start - 2 * np.pi * np.arange(n) / n
    spread = 1.8 if n == 2 else 1.5  # room for the loops outside, the arcs between
    return {
        r: spread * np.array([np.cos(a), np.sin(a)]) for r, a in zip(regions, angles, strict=True)
    }


def _style(edge: _Edge) -> dict:
    """Colour by the sign of the effect; line width and opacity by Pp (dashed when Pp is
    not known)."""
    colour = POSITIVE if edge.mean > 0 else NEGATIVE if edge.mean < 0 else UNSIGNED
    if not np.isfinite(edge.pp):
        return {"color": colour, "lw": 1.0, "alpha": 0.5, "linestyle": "--"}
    pp = float(np.clip(edge.pp, 0.0, 1.0))  # averaged Pp can exceed 1 by a rounding error
    return {"color": colour, "lw": 0.6 + 3.4 * pp, "alpha": 0.25 + 0.75 * pp, "linestyle": "-"}


def _label(edge: _Edge) -> str:
    pp = f"Pp {edge.pp:.2f}" if np.isfinite(edge.pp) else "Pp n/a"
    mean = f"{edge.mean:+.3f}" if np.isfinite(edge.mean) else "n/a"
    return f"{edge.field} {mean}\n{pp}"


def _rotate(vector: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])


# directions (radians from "outward") of a region's k-th loop and of its driving inputs
_LOOP_TURNS = (0.0, 0.9, -0.9, 1.8, -1.8)
_INPUT_TURN = -1.7


def _draw_edge(ax, edge: _Edge, nodes: dict[str, np.ndarray], slot: int) -> None:
    """One arrow: between two regions an arc (curving further for a higher ``slot``), a
    region onto itself a loop outside the node (``slot`` turns it), a driving input a
    straight arrow from outside."""
    style = _style(edge)
    target = nodes[edge.target]
    norm = float(np.linalg.norm(target))
    outward = target / norm if norm > 0 else np.array([0.0, 1.0])
    r = _NODE_RADIUS
    if edge.source is None:
        direction = _rotate(outward, _INPUT_TURN + 0.5 * slot)
        start, end = target + direction * (r + 0.55), target + direction * r
        path = Path([start, end])
        label_at = start + direction * 0.2
    elif edge.source == edge.target:
        direction = _rotate(outward, _LOOP_TURNS[slot % len(_LOOP_TURNS)])
        reach = r + 0.55
        points = [
            target + r * _rotate(direction, 0.45),
            target + reach * _rotate(direction, 0.55),
            target + reach * _rotate(direction, -0.55),
            target + r * _rotate(direction, -0.45),
        ]
        path = Path(points, [Path.MOVETO, Path.CURVE4, Path.CURVE4, Path.CURVE4])
        label_at = target + direction * (reach + 0.12)
    else:
        source = nodes[edge.source]
        along = (target - source) / np.linalg.norm(target - source)
        start, end = source + along * r, target - along * r
        rad = 0.25 + 0.35 * slot
        delta = end - start
        # a quadratic Bézier curve bulging to the left of the direction of travel, so the
        # two directions of a pair of regions bend apart
        control = (start + end) / 2 + rad * np.array([delta[1], -delta[0]])
        path = Path([start, control, end], [Path.MOVETO, Path.CURVE3, Path.CURVE3])
        label_at = 0.25 * start + 0.5 * control + 0.25 * end
    ax.add_patch(
        FancyArrowPatch(
            path=path,
            arrowstyle="-|>",
            mutation_scale=10,
            shrinkA=0,
            shrinkB=0,
            zorder=2,
            **style,
        )
    )
    ax.text(
        *label_at,
        _label(edge),
        fontsize=6,
        ha="center",
        va="center",
        color=style["color"],
        zorder=4,
        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
    )


def connectivity_diagram_png(
    effects: pd.DataFrame, analysis: str, regions: Sequence[str] | None = None
) -> bytes:
    """The group DCM effects of ``analysis`` as connectivity diagrams, one panel per
    covariate: regions as nodes, every connection (A) and its modulation by each input
    (B[input]) an arrow from source to target (a region onto itself a loop), each driving
    input (C[input]) an arrow from outside. Red = positive effect, blue = negative; line
    width and opacity grow with Pp (dashed when Pp is missing); each arrow is labelled with
    the field, the effect and Pp. At most :data:`PANELS_PER_ROW` panels side by side.

    ``effects``: rows of ``dcm_group_effects`` (analysis, covariate, parameter, mean, Pp);
    ``regions``: node order (default: as they appear in the parameter names). Parameters
    of other kinds (hemodynamics) are not drawn. Raises ValueError when the analysis has no
    drawable effect.
    """
    rows = effects[effects["analysis"] == analysis]
    pp_values = rows["Pp"] if "Pp" in rows else pd.Series(np.nan, index=rows.index)
    edges: dict[str, list[_Edge]] = {}
    for covariate, parameter, mean, pp in zip(
        rows["covariate"].astype(str),
        rows["parameter"].astype(str),
        pd.to_numeric(rows["mean"], errors="coerce"),
        pd.to_numeric(pp_values, errors="coerce"),
        strict=True,
    ):
        edge = _edge(parameter, float(mean), float(pp))
        if edge is not None:
            edges.setdefault(covariate, []).append(edge)
    if not edges:
        raise ValueError(f"no connection effects for analysis {analysis!r}")
    named = [r for d in edges.values() for e in d for r in (e.source, e.target) if r is not None]
    order: list[str] = list(dict.fromkeys([*(regions or []), *named]))
    nodes = _node_positions(order)
    # room around the nodes for the loops, the inputs and the labels
    reach = np.abs(np.array(list(nodes.values()))).max(axis=0) + 1.35
    width, n_columns = 4.8, min(len(edges), PANELS_PER_ROW)
    n_rows = -(-len(edges) // n_columns)
    height = width * reach[1] / reach[0] + 0.4
    figure = Figure(figsize=(width * n_columns, height * n_rows))
    axes = figure.subplots(n_rows, n_columns, squeeze=False).ravel()
    for ax in axes[len(edges) :]:
        ax.set_visible(False)
    for ax, (covariate, drawn) in zip(axes, edges.items(), strict=False):
        seen: dict[tuple, int] = {}
        for edge in drawn:
            # several parameters on one connection (A, B[input] …) bend further apart
            key = (edge.source, edge.target) if edge.source else (None, edge.target)
            slot = seen.get(key, 0)
            seen[key] = slot + 1
            _draw_edge(ax, edge, nodes, slot)
        for name, (x, y) in nodes.items():
            ax.add_patch(Circle((x, y), _NODE_RADIUS, fc="#f2f2f2", ec="#333333", zorder=3))
            ax.text(x, y, name, ha="center", va="center", fontsize=6.5, zorder=5)
        ax.set_xlim(-reach[0], reach[0])
        ax.set_ylim(-reach[1], reach[1])
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(covariate, fontsize=8)
    figure.suptitle(
        f"group DCM, {analysis}: red = positive, blue = negative; "
        "width and opacity = Pp (dashed: Pp unknown)",
        fontsize=8,
    )
    return figure_png(figure, max_bytes=400_000, dpi=110, tight=True)
