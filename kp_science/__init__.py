"""kp's science: study IO and every analysis, as plain functions and dataclasses (no Dagster).

The layers and the rule between them are in docs/architecture.md.
"""
