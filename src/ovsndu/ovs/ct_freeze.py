"""Freezing conntrack entry creation in the old vswitchd for its final read.

Conntrack is read last before the old process is stopped, zone by zone, while it still
forwards; an entry created during that read may be missed.  With the userspace
datapath's connection limit at 0 (``dpctl/ct-set-maxconns``) no entry can be created at
all (OVS 3.1 lib/conntrack.c ``conn_not_found``: a commit is refused while the count is
at or above the limit; the ``conntrack_full`` coverage counter counts each refusal), so
the read holds every entry that exists when the process stops.  A connection that
begins during the freeze is forwarded as ``+new`` without an entry, and starts again in
the new process — like one whose first packet falls into the handover gap.

Not frozen (:func:`why_not_freeze`), the window is named instead:

- a pipeline that uses NAT: a refused commit is not translated either, so a frozen
  table would let new connections' packets pass with their original addresses;
- the kernel datapath: its table is the kernel's, and the limit is not OVS's.

The limit in force before is put back (:func:`thaw`) when the old process goes on
serving, and set on the new process when it takes over (:func:`carry_limit`): OVS does
not keep it across a restart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ovsndu.errors import ParseError
from ovsndu.model import Entry, Flow, Group
from ovsndu.ovs.unixctl import Unixctl

_NAT = re.compile(r"\bnat\b")


def why_not_freeze(dps: Iterable[str], flows: Iterable[Entry],
                   groups: Iterable[Entry]) -> str | None:
    """Why the conntrack table of *dps* must not be frozen, or None (pure)."""
    kernel = [dp for dp in dps if dp.startswith("system@")]
    if kernel:
        return f"kernel datapath {kernel[0]} (its conntrack is the kernel's)"
    for flow in flows:
        if isinstance(flow, Flow) and _NAT.search(flow.actions):
            return _nat(f"{flow.bridge} table {flow.table}")
    for group in groups:
        if isinstance(group, Group) and any(_NAT.search(b) for b in group.buckets):
            return _nat(f"{group.bridge} group {group.group_id}")
    return None


def _nat(where: str) -> str:
    return f"the pipeline uses NAT ({where}): a refused commit would pass untranslated"


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ParseError(what, text[:200], "no number") from None


def limits(appctl: Unixctl, dps: Iterable[str]) -> dict[str, int]:
    """Each datapath's connection limit (``ct-get-maxconns``)."""
    return {dp: _int(appctl("dpctl/ct-get-maxconns", dp), "conntrack limit") for dp in dps}


def refusals(appctl: Unixctl) -> int:
    """How many commits the process refused so far for a full table (all datapaths)."""
    return _int(appctl("coverage/read-counter", "conntrack_full"), "conntrack_full counter")


def freeze(appctl: Unixctl, dps: Iterable[str]) -> None:
    """No new conntrack entry in *dps* from now on."""
    for dp in dps:
        appctl("dpctl/ct-set-maxconns", dp, "0")


def thaw(appctl: Unixctl, previous: Mapping[str, int]) -> None:
    """The limits in force before :func:`freeze`."""
    for dp, limit in previous.items():
        appctl("dpctl/ct-set-maxconns", dp, str(limit))


def carry_limit(appctl: Unixctl, previous: Mapping[str, int]) -> dict[str, int]:
    """Set the old process's limits on the new one where they differ; what was set."""
    have = limits(appctl, [dp for dp in previous if dp in appctl("dpctl/dump-dps").split()])
    changed = {dp: previous[dp] for dp, limit in have.items() if limit != previous[dp]}
    thaw(appctl, changed)
    return changed
