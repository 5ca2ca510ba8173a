"""PNG encoding of matplotlib figures, and PNG bytes as an inline markdown image.

Every figure of the project (ROI positions and matrices, elastic-net plots, DCM fits and
group effects) is drawn on a bare ``matplotlib.figure.Figure``, never through pyplot, and
encoded here with the Agg canvas, within a size budget: Dagster keeps metadata in its run
database. An asset shows a figure as markdown metadata::

    dg.MetadataValue.md(markdown_image(figure_png(figure), "title"))
"""

from __future__ import annotations

import base64
import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 80  # keeps a figure around 20–60 KB, below the metadata budget
MAX_PNG_BYTES = 100_000  # Dagster stores metadata in its run database: keep it small


def figure_png(
    figure: Figure, max_bytes: int = MAX_PNG_BYTES, dpi: int = DPI, tight: bool = False
) -> bytes:
    """PNG bytes of a figure (Agg canvas) at ``dpi``, halving the resolution while the file
    is above ``max_bytes``; ``tight`` crops it to what is drawn (``bbox_inches="tight"``)."""
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    while True:
        buffer.seek(0)
        buffer.truncate()
        figure.savefig(
            buffer,
            format="png",
            dpi=dpi,
            facecolor=figure.get_facecolor(),
            bbox_inches="tight" if tight else None,
        )
        if buffer.tell() <= max_bytes or dpi <= 20:
            return buffer.getvalue()
        dpi //= 2


def markdown_image(png: bytes, alt: str) -> str:
    """A markdown image with the PNG inline as a base64 data URI (Dagster renders it)."""
    text = alt.replace("[", "(").replace("]", ")").replace("\n", " ")
    return f"![{text}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
