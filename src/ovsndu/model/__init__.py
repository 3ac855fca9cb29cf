"""The state model: nine immutable categories, canonical order, digests, diffs (pure)."""

from ovsndu.model.snapshot import Snapshot, VswitchdInfo, category_digest, sort_entries
from ovsndu.model.state import (
    CATEGORIES,
    ENTRY_TYPES,
    Conntrack,
    Entry,
    FdbEntry,
    Flow,
    Group,
    Meter,
    Port,
    Route,
    TlvMapping,
    TunnelNeighbor,
    entry_from_dict,
)

__all__ = [
    "CATEGORIES",
    "ENTRY_TYPES",
    "Conntrack",
    "Entry",
    "FdbEntry",
    "Flow",
    "Group",
    "Meter",
    "Port",
    "Route",
    "Snapshot",
    "TlvMapping",
    "TunnelNeighbor",
    "VswitchdInfo",
    "category_digest",
    "entry_from_dict",
    "sort_entries",
]

from ovsndu.model.diff import CategoryDiff, diff_category, diff_snapshots

__all__ += ["CategoryDiff", "diff_category", "diff_snapshots"]
