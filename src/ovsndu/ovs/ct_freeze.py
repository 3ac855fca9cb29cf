"""Freezing conntrack entry creation in the old vswitchd for its final read.

Conntrack is read last before the old process is stopped, zone by zone, while it still
forwards; an entry created during that read may be missed.  With the userspace
datapath's connection limit at 0 (``dpctl/ct-set-maxconns``) no entry can be created at
all (OVS 3.1 lib/conntrack.c ``conn_not_found``: a commit is refused while the count is
at or above the limit; the ``conntrack_full`` coverage counter counts each refusal), so
the read holds every entry that exists when the process stops.  A connection that
begins during the freeze is forwarded as ``+new`` without an entry, and starts again in
the new process — like one whose first packet falls into the handover gap.

A pipeline that uses NAT (:func:`uses_nat`: a flow's or a group bucket's ``nat``
action; OVN's load balancers and routers) is frozen too, by default: the refused commit
returns before NAT is set up, so a connection that *begins* during the freeze has its
first packet(s) forwarded untranslated (a DNAT/LB packet goes on to the VIP, an SNAT
packet leaves with its internal source) and recovers on retransmission in the new
process.  Not frozen, a NAT'd connection whose entry is created during the read would
be missing in the new process for good (its replies not un-NATed, or the LB choosing
another backend).  The trade is named in the record and the journal
(:func:`nat_note`: "new connections' first packets passed without a conntrack entry and
without NAT during the freeze: N commits refused").  ``[upgrade] ct_freeze_nat = false``
keeps such a pipeline unfrozen, as before.

Not frozen (:func:`why_not_freeze`), the window is named instead:

- the kernel datapath: its table is the kernel's, and the limit is not OVS's;
- a NAT pipeline with ``ct_freeze_nat = false``.

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


def uses_nat(flows: Iterable[Entry], groups: Iterable[Entry]) -> str | None:
    """Where the pipeline uses NAT (the first flow or group bucket found), or None (pure)."""
    for flow in flows:
        if isinstance(flow, Flow) and _NAT.search(flow.actions):
            return f"{flow.bridge} table {flow.table}"
    for group in groups:
        if isinstance(group, Group) and any(_NAT.search(b) for b in group.buckets):
            return f"{group.bridge} group {group.group_id}"
    return None


def why_not_freeze(dps: Iterable[str], nat: str | None, *, freeze_nat: bool = True
                   ) -> str | None:
    """Why the conntrack table of *dps* must not be frozen, or None (pure).  *nat*: where
    the pipeline uses NAT (:func:`uses_nat`); *freeze_nat*: ``[upgrade] ct_freeze_nat``."""
    kernel = [dp for dp in dps if dp.startswith("system@")]
    if kernel:
        return f"kernel datapath {kernel[0]} (its conntrack is the kernel's)"
    if nat is not None and not freeze_nat:
        return (f"the pipeline uses NAT ({nat}) and [upgrade] ct_freeze_nat = false "
                "(a refused commit would pass untranslated)")
    return None


def nat_note(nat: str, refused: int | None) -> str:
    """The record's and the journal's words for a NAT pipeline frozen anyway (pure);
    *refused*: commits refused during the freeze (None: could not be counted)."""
    n = "an unknown number of" if refused is None else str(refused)
    return (f"new connections' first packets passed without a conntrack entry and without "
            f"NAT during the freeze: {n} commits refused (a packet committed in two zones "
            f"counts twice; the pipeline uses NAT: {nat}); each such connection starts "
            f"again in the new process")


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
