"""atss.utils: tools to look at what the model and its assignment do."""

from .positives import (
    LEVEL_COLORS,
    Explanation,
    GTSelection,
    draw_positives,
    explain_assignment,
    format_table,
    pick_gts,
)
