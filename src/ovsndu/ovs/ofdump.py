"""Read a bridge's rules as bytes and as text; send rules as bytes (the adapter of ofwire).

Reading: one OpenFlow 1.5 flow-desc dump over the bridge's management socket.  The
text of each rule is what ``ovs-ofctl ofp-parse`` prints for those very bytes (the
same printer as ``dump-flows``, so text and bytes pair one to one, in order).  The
flow-mods built from the entries go through the same decoder OVS uses on receipt
(``ofp-parse`` prints ``***decode error: ...***`` for a message the switch would
refuse); a rule refused there was added over OpenFlow 1.0 and is read again with
``NXST_FLOW`` and carried as an ``NXT_FLOW_MOD`` in that protocol.  A rule no
protocol can carry stays without bytes and goes by its text, which fails loudly.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from ovsndu.errors import ParseError, VswitchdError
from ovsndu.model import Flow, Group
from ovsndu.ovs import ofwire, parsers
from ovsndu.ovs.ofbundle import handshake
from ovsndu.ovs.ofwire import HEADER

ERROR, ECHO_REQUEST, ECHO_REPLY, HELLO, BARRIER_REQUEST, BARRIER_REPLY = 1, 2, 3, 0, 20, 21
OF10_BARRIER_REQUEST, OF10_BARRIER_REPLY = 18, 19
_REPLY_HEAD = re.compile(r"^\S+ reply (?:\(OF[0-9.x]+\) )?\(xid=0x([0-9a-f]+)\):")
_DECODE_ERROR = re.compile(r"^(\S+) \(OF[0-9.x]+\) \(xid=0x([0-9a-f]+)\): \*\*\*decode error: "
                           r"(\S+)\*\*\*")


class _Conn:
    """A blocking OpenFlow connection to one management socket."""

    def __init__(self, path: Path, version: int, timeout: float = 300.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.version = version
        try:
            self.buf = handshake(self.sock, path, version)
        except VswitchdError:
            self.sock.close()
            raise
        except (OSError, EOFError) as exc:
            self.sock.close()
            raise VswitchdError(f"{path.name}: {exc or 'closed at hello'}") from None

    def recv(self) -> bytes:
        while True:
            if len(self.buf) >= HEADER.size:
                length = HEADER.unpack_from(self.buf)[2]
                if length < HEADER.size:
                    raise VswitchdError("malformed OpenFlow message (length below header)")
                if len(self.buf) >= length:
                    msg = bytes(self.buf[:length])
                    del self.buf[:length]
                    if msg[1] == ECHO_REQUEST:
                        self.sock.sendall(msg[:1] + bytes([ECHO_REPLY]) + msg[2:])
                        continue
                    return msg
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise VswitchdError("the switch closed the OpenFlow connection")
            self.buf += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _dump(path: Path, version: int, request: bytes) -> list[bytes]:
    conn = _Conn(path, version)
    try:
        conn.sock.sendall(request)
        xid = HEADER.unpack_from(request)[3]
        replies = []
        while True:
            msg = conn.recv()
            if HEADER.unpack_from(msg)[3] != xid:
                continue
            if msg[1] == ERROR:
                raise VswitchdError(f"{path.name}: flow dump refused: "
                                    f"{_print_messages([msg]).splitlines()[0]}")
            replies.append(msg)
            if not ofwire.more_follows(msg):
                return replies
    except OSError as exc:
        raise VswitchdError(f"{path.name}: flow dump failed: {exc}") from None
    finally:
        conn.close()


def _print_messages(messages: Iterable[bytes]) -> str:
    """``ovs-ofctl ofp-parse`` of *messages* (through a pipe: no file is left behind if this
    process is killed): OVS's own decoder and printer."""
    try:
        proc = subprocess.run(["ovs-ofctl", "ofp-parse", "/dev/stdin"], input=b"".join(messages),
                              capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VswitchdError(f"ovs-ofctl ofp-parse: {exc}") from None
    if proc.returncode != 0:
        raise VswitchdError(f"ovs-ofctl ofp-parse: {proc.stderr.decode(errors='replace')[:200]}")
    return proc.stdout.decode(errors="replace")


def printer_id() -> tuple[int, ...] | None:
    """Which ``ovs-ofctl`` prints rules here (device, inode, size, mtime of the one on
    PATH); None when there is none.  Rules read under another printer are not *known*
    rules for :func:`read_flows` (a package upgrade may print them otherwise)."""
    path = shutil.which("ovs-ofctl")
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _texts(entries: list[bytes], prefix: bytes) -> list[str | None]:
    """What OVS prints for each entry, alone in a reply built from *prefix* (the reply's
    header and multipart header); None for an entry ovs-ofctl cannot decode."""
    version, kind, size = prefix[0], prefix[1], len(prefix)
    multipart = prefix[8:10] + b"\0\0" + prefix[12:]  # its type, no "more" flag
    messages = [HEADER.pack(version, kind, size + len(e), xid) + multipart + e
                for xid, e in enumerate(entries)]
    out: list[str | None] = [None] * len(entries)
    current = None
    for line in _print_messages(messages).splitlines():
        if line.startswith(" "):
            if current is not None and " actions=" in line:
                out[current] = line
                current = None
            continue
        head = _REPLY_HEAD.match(line)
        if head:
            current = int(head.group(1), 16)
    return out


def _paired(bridge: str, entries: list[bytes], prefix: bytes) -> list[Flow | None]:
    return [parsers.flow_of_line(bridge, t) if t is not None else None
            for t in _texts(entries, prefix)]


def read_flows(mgmt: Path, bridge: str, known: Sequence[Flow] | None = None) -> list[Flow]:
    """Every rule of *bridge*, each with its text and (where some protocol can carry it)
    its flow-mod bytes; ParseError naming a rule OVS's own printer cannot decode.

    *known*: the rules an earlier read found (a snapshot's, a restore's): when the switch
    describes exactly these, byte for byte (every rule's flow-mod, as a multiset), they
    are the answer, without printing and parsing them again.  Their text is what the same
    printer made of the same bytes, so the comparison is not weaker than the text's;
    any difference (or a rule without OpenFlow 1.5 bytes) reads everything."""
    # At 50k rules a bridge's dump, printed text, flow-mods and rules are tens of MiB
    # each, and four bridges are read at once: each is let go as soon as it is used.
    replies = _dump(mgmt, ofwire.OF15, ofwire.flow_desc_request(1))
    prefix = replies[0][:16]
    entries = [e for r in replies for e in ofwire.desc_entries(r)]
    del replies
    wires = [_b64(ofwire.flow_mod15(e)) for e in entries]  # transaction id 0: comparable
    if known is not None and len(known) == len(wires) and sorted(wires) == sorted(
            f.wire for f in known):
        return list(known)
    texts = _texts(entries, prefix)
    for entry, text in zip(entries, texts, strict=True):
        if text is None:
            raise ParseError("flow", entry.hex(), "ovs-ofctl cannot decode this rule")
    refused = _refused([ofwire.flow_mod15(e, xid) for xid, e in enumerate(entries)])
    del entries
    flows: list[Flow] = []
    for xid, text in enumerate(texts):
        assert text is not None
        flows.append(parsers.flow_of_line(bridge, text, "" if xid in refused else wires[xid]))
        texts[xid] = None
    del wires, texts
    if refused:
        by_key = _nx_mods(mgmt, bridge)
        for xid in refused:
            f = flows[xid]
            nx = by_key.get(ofwire.rule_key(f.table, f.priority, f.match))
            if nx:
                flows[xid] = dataclasses.replace(f, wire=_b64(ofwire.nx_flow_mod(
                    nx, send_flow_rem="send_flow_rem" in f.flags)))
    return flows


def flows_of_entries(bridge: str, entries: list[bytes], prefix: bytes) -> list[Flow]:
    """Rules from flow-desc *entries* that were not read by :func:`read_flows` (the flow
    monitor's, ovs/ofmonitor.py): text from OVS's printer, bytes where OpenFlow 1.5
    carries them (else the rule goes by its text)."""
    printed = _paired(bridge, entries, prefix)
    mods = [ofwire.flow_mod15(e, xid) for xid, e in enumerate(entries)]
    refused = _refused(mods) if mods else set()
    flows = []
    for i, (entry, flow) in enumerate(zip(entries, printed, strict=True)):
        if flow is None:
            raise ParseError("flow", entry.hex(), "ovs-ofctl cannot decode this rule")
        flows.append(dataclasses.replace(flow, wire="" if i in refused else _b64(mods[i])))
    return flows


def groups_of_reply(bridge: str, reply: bytes) -> list[Group]:
    """The groups of one OpenFlow 1.5 group-desc *reply*, as :func:`read_groups` gives them."""
    entries = {ofwire.group_id(e): e for e in ofwire.group_entries(reply)}
    groups = parsers.parse_groups(bridge, _print_messages([reply])) if entries else []
    if sorted(g.group_id for g in groups) != sorted(entries):
        raise ParseError("groups", f"{bridge}: {len(entries)} groups",
                         f"ovs-ofctl printed {len(groups)} for them")
    return [dataclasses.replace(g, wire=_b64(ofwire.group_mod15(entries[g.group_id])))
            for g in groups]


def groups_of_entries(bridge: str, entries: list[bytes], prefix: bytes) -> list[Group]:
    """One group per group-desc entry, in order (ids may repeat: the flow monitor's)."""
    messages = []
    for xid, e in enumerate(entries):
        msg = bytearray(prefix + e)
        struct.pack_into("!HI", msg, 2, len(msg), xid)
        messages.append(bytes(msg))
    groups = parsers.parse_groups(bridge, _print_messages(messages)) if entries else []
    if [g.group_id for g in groups] != [ofwire.group_id(e) for e in entries]:
        raise ParseError("groups", f"{bridge}: {len(entries)} groups",
                         f"ovs-ofctl printed {len(groups)} for them")
    return [dataclasses.replace(g, wire=_b64(ofwire.group_mod15(e)))
            for g, e in zip(groups, entries, strict=True)]


def print_messages(messages: Iterable[bytes]) -> str:
    """What ``ovs-ofctl ofp-parse`` prints for *messages*."""
    return _print_messages(messages)


def _refused(mods: list[bytes]) -> set[int]:
    """xids of the flow-mods OVS's decoder refuses (e.g. OFPBAC_MATCH_INCONSISTENT)."""
    text = _print_messages(mods)
    if "***decode error: " not in text:
        return set()
    out = set()
    for line in text.splitlines():
        m = _DECODE_ERROR.match(line)
        if m:
            out.add(int(m.group(2), 16))
    return out


def _nx_mods(mgmt: Path, bridge: str) -> dict[tuple[int, int, str], bytes]:
    """Every rule read over OpenFlow 1.0 (NXST_FLOW): its nx_flow_stats entry by rule key."""
    try:
        replies = _dump(mgmt, ofwire.OF10, ofwire.nx_flow_request(1))
    except VswitchdError:
        return {}  # the bridge does not allow OpenFlow 1.0: such rules go by their text
    entries = [e for r in replies for e in ofwire.nx_entries(r)]
    flows = _paired(bridge, entries, replies[0][:24])
    return {ofwire.rule_key(f.table, f.priority, f.match): e
            for f, e in zip(flows, entries, strict=True) if f is not None}


def read_groups(mgmt: Path, bridge: str) -> list[Group]:
    """Every group of *bridge* (one OpenFlow 1.5 group-desc dump), each with its text (what
    ``ovs-ofctl`` prints for the same bytes) and the group-mod that creates it again."""
    replies = _dump(mgmt, ofwire.OF15, ofwire.group_desc_request(1))
    return [g for r in replies for g in groups_of_reply(bridge, r)]


def _b64(msg: bytes) -> str:
    return base64.b64encode(msg).decode()


def message(flow: Flow | Group) -> bytes:
    """The flow-mod (group-mod) an entry carries (empty when it goes by its text)."""
    return base64.b64decode(flow.wire, validate=True) if flow.wire else b""


def send_unbundled(mgmt: Path, flows: Sequence[Flow]) -> None:
    """Install OpenFlow 1.0 (``NXT_FLOW_MOD``) rules one by one, then a barrier;
    VswitchdError naming the first rule the switch refused."""
    if not flows:
        return
    conn = _Conn(mgmt, ofwire.OF10)
    try:
        conn.sock.sendall(ofwire.flow_mod_table_id(1))
        msgs = [ofwire.with_xid(message(f), 100 + i) for i, f in enumerate(flows)]
        conn.sock.sendall(b"".join(msgs))
        barrier = HEADER.pack(ofwire.OF10, OF10_BARRIER_REQUEST, HEADER.size, 2)
        conn.sock.sendall(barrier)
        errors = []
        while True:
            msg = conn.recv()
            if msg[1] == ERROR:
                errors.append(msg)
            elif msg[1] == OF10_BARRIER_REPLY and HEADER.unpack_from(msg)[3] == 2:
                break
        if errors:
            xid = HEADER.unpack_from(errors[0])[3]
            text = _print_messages(errors[:1]).splitlines()[0]
            kind = text.split("):", 1)[-1].strip()
            which = flows[xid - 100].spec() if 100 <= xid < 100 + len(flows) else "?"
            raise VswitchdError(f"{mgmt.name}: Error {kind} for: flow add {which}")
    except OSError as exc:
        raise VswitchdError(f"{mgmt.name}: sending OpenFlow 1.0 rules failed: {exc}") from None
    finally:
        conn.close()


def bundle_adds(flows: Sequence[Flow | Group], template: bytes, first_xid: int) -> list[bytes]:
    """OpenFlow 1.5 ``BUNDLE_ADD`` messages carrying *flows*' flow-mods, for the bundle
    whose open request is *template* (its bundle id and flags)."""
    bundle_id, _type, flags = struct.unpack_from("!IHH", template, HEADER.size)
    out = []
    for i, f in enumerate(flows):
        inner = ofwire.with_xid(message(f), first_xid + i)
        body = struct.pack("!I2xH", bundle_id, flags) + inner
        out.append(HEADER.pack(ofwire.OF15, 34, HEADER.size + len(body), first_xid + i) + body)
    return out
