"""Asset metadata helpers (kp_resources.asset_metadata)."""

import pandas as pd

from kp_resources.asset_metadata import markdown_table


def test_markdown_fallback_without_tabulate(monkeypatch):
    def no_tabulate(self, *args, **kwargs):
        raise ImportError("tabulate")

    monkeypatch.setattr(pd.DataFrame, "to_markdown", no_tabulate)
    text = markdown_table(pd.DataFrame({"a": [1, 2], "b": ["x|y", "z"]}))
    lines = text.splitlines()
    assert lines[0] == "|  | a | b |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| 0 | 1 | x\\|y |"
