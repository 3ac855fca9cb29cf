"""Plans of OpenFlow packet-outs that recreate conntrack and FDB entries (pure).

Upstream has no command to insert a userspace conntrack entry or a dynamic MAC
learning entry.  Both are recreated the way traffic created them: synthesized
frames sent as packet-outs whose actions never output anything.

* conntrack: the first packet runs
  ``ct(commit,zone=Z[,nat(..)][,alg=A][,exec(mark,label)])``, the rest ``ct(zone=Z)``;
  TCP follows the handshake (and closing sequence) that leads to the recorded state
  pair, with consistent sequence numbers; UDP, ICMP, ICMPv6, SCTP and every other IP
  protocol get their first packet and, when the entry had seen one, a reply.  A related
  entry (one with a ``parent``) is replayed after its parent, whose ALG has by then
  created the expectation it matches (TFTP); an FTP data connection's expectation
  comes from a ``PORT``/``227`` command on the control connection, which is replayed
  as such.
* FDB: a frame from the MAC, in on its port and VLAN, addressed to a temporary
  static *decoy* MAC on that same port, through ``NORMAL``: the bridge learns the
  source and, the destination being the input port, transmits nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ovsndu.errors import RestoreError
from ovsndu.model import Conntrack, FdbEntry
from ovsndu.ovs.appctl_parsers import CT_PROTOCOLS
from ovsndu.ovs.packets import ethernet, frame


class CannotReplay(RestoreError):
    """An entry that is valid but that OVS offers no way to recreate (an *uncarried* one)."""


# UDP and ICMP: an entry whose remaining timeout exceeds this saw no reply (3.1 defaults:
# first packet 60 s... replied 30 s); ambiguous only within the last 30 s of its life.
REPLIED_TIMEOUT = 30
_X, _Y = 0x10000000, 0x20000000
_HS = (("o", "syn"), ("r", "syn|ack"), ("o", "ack"))

# (state_orig, state_reply) -> the packets that lead there (o: original, r: reply direction)
TCP_SEQUENCES: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("SYN_SENT", "CLOSED"): (("o", "syn"),),
    ("ESTABLISHED", "SYN_SENT"): (("o", "syn"), ("r", "syn|ack")),
    ("ESTABLISHED", "ESTABLISHED"): _HS,
    ("CLOSING", "ESTABLISHED"): (*_HS, ("o", "fin|ack")),
    ("FIN_WAIT_2", "ESTABLISHED"): (*_HS, ("o", "fin|ack"), ("r", "ack")),
    ("FIN_WAIT_2", "CLOSING"): (*_HS, ("o", "fin|ack"), ("r", "fin|ack")),
    ("FIN_WAIT_2", "FIN_WAIT_2"): (*_HS, ("o", "fin|ack"), ("r", "fin|ack"), ("o", "ack")),
    ("ESTABLISHED", "CLOSING"): (*_HS, ("r", "fin|ack")),
    ("ESTABLISHED", "FIN_WAIT_2"): (*_HS, ("r", "fin|ack"), ("o", "ack")),
    ("CLOSING", "FIN_WAIT_2"): (*_HS, ("r", "fin|ack"), ("o", "fin|ack")),
    ("TIME_WAIT", "TIME_WAIT"): (*_HS, ("o", "rst|ack")),
}


# Userspace conntrack's TCP states, in the order its state machine compares them.
TCP_STATES = ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT",
              "FIN_WAIT_1", "CLOSING", "LAST_ACK", "FIN_WAIT_2", "TIME_WAIT")
_S = {name: i for i, name in enumerate(TCP_STATES)}
_TCP_MOVES = tuple((side, flags) for side in "or"
                   for flags in ("syn", "syn|ack", "ack", "fin|ack", "rst|ack"))


def _tcp_step(state: tuple[int, int], side: str, flags: str, first: bool
              ) -> tuple[int, int]:
    """The (orig, reply) states after one packet, as lib/conntrack-tcp.c updates them with
    sequence checking off: a side's first packet makes it SYN_SENT; then SYN, FIN, ACK
    (of the peer's SYN or FIN) and RST move the states on."""
    src, dst = state if side == "o" else state[::-1]
    if first:
        src = max(src, _S["SYN_SENT"])
    if "fin" in flags and src < _S["CLOSING"]:
        src = _S["CLOSING"]
    if "ack" in flags:
        if dst == _S["SYN_SENT"]:
            dst = _S["ESTABLISHED"]
        elif dst == _S["CLOSING"]:
            dst = _S["FIN_WAIT_2"]
    if "rst" in flags:
        src = dst = _S["TIME_WAIT"]
    return (src, dst) if side == "o" else (dst, src)


def _search_tcp_sequences(depth: int = 7, *, reply_syn: bool | None = None
                          ) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    """The shortest packet sequence to every reachable state pair: a new connection
    starts with the original side's SYN (orig SYN_SENT, reply CLOSED); a side's SYN only
    as its first packet (a later one would start a new connection).  *reply_syn* True: the
    reply side must have sent, as its first packet, a SYN+ACK (it announced a window
    scale: 3.1 records the reply's scale from a SYN+ACK, not from a bare SYN);
    False: it must not have sent a SYN (a SYN without the option clears the original
    side's window scale)."""
    Node = tuple[tuple[int, int], frozenset[str]]
    start: Node = ((_S["SYN_SENT"], _S["CLOSED"]), frozenset({"o"}))
    paths: dict[Node, tuple[tuple[str, str], ...]] = {start: (("o", "syn"),)}
    frontier = [start]
    for _ in range(depth):
        nxt = []
        for node in frontier:
            state, seen = node
            for side, flags in _TCP_MOVES:
                first = side not in seen
                if "syn" in flags and (not first or side == "o" or min(state) >= _S["FIN_WAIT_2"]):
                    continue  # (a SYN on a closed connection starts a new one)
                if reply_syn is not None and side == "r" and first and (
                        (flags == "syn|ack") != reply_syn if reply_syn else "syn" in flags):
                    continue
                new: Node = (_tcp_step(state, side, flags, first), seen | {side})
                if new not in paths:
                    paths[new] = (*paths[node], (side, flags))
                    nxt.append(new)
        frontier = nxt
    found: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    for (state, seen), path in sorted(paths.items(), key=lambda item: len(item[1])):
        if reply_syn and "r" not in seen:
            continue
        found.setdefault((TCP_STATES[state[0]], TCP_STATES[state[1]]), path)
    return found


@dataclass(frozen=True, slots=True)
class PacketOut:
    """One packet-out: ``packet-out in_port=P packet=HEX actions=A``."""

    in_port: str
    packet: bytes
    actions: str

    def line(self) -> str:
        """The line of an ``ovs-ofctl bundle`` file."""
        return (
            f"packet-out in_port={self.in_port} packet={self.packet.hex()} actions={self.actions}"
        )


def _tuple(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


ALGS = ("ftp", "tftp")


def _commit_actions(entry: Conntrack) -> str:
    parts = ["commit", f"zone={entry.zone}"]
    if entry.helper:
        if entry.helper not in ALGS:
            raise CannotReplay("conntrack", f"helper {entry.helper} has no ALG in OVS's "
                               f"ct(alg=...): {entry.protocol} {entry.orig}")
        parts.append(f"alg={entry.helper}")
    if entry.nat:
        if entry.nat.count("=") > 1:
            raise CannotReplay(
                "conntrack",
                f"entry with both SNAT and DNAT cannot be replayed: {entry.protocol} {entry.orig}",
            )
        parts.append(f"nat({entry.nat})")
    sets = []
    if entry.mark:
        sets.append(f"set_field:{entry.mark}->ct_mark")
    if int(entry.labels, 16):
        sets.append(f"set_field:{entry.labels}->ct_label")
    if sets:
        parts.append(f"exec({','.join(sets)})")
    return f"ct({','.join(parts)})"


def conntrack_packets(entry: Conntrack, children: tuple[Conntrack, ...] = ()
                      ) -> list[PacketOut]:
    """The packet-outs that recreate *entry*; CannotReplay for a state we cannot reach.

    *children*: the related entries that name *entry* as their parent; for an FTP
    control connection, the commands that announced their data connections are sent
    on it (``PORT``/``EPRT`` from the client, ``227``/``229`` from the server).
    """
    frames, commit, follow = _planned(entry, children)
    return [PacketOut("controller", f, commit if i == 0 else follow)
            for i, f in enumerate(frames())]


def replay_reason(entry: Conntrack, children: tuple[Conntrack, ...] = ()) -> str | None:
    """Why *entry* cannot be replayed (what :func:`conntrack_packets` would raise as
    CannotReplay), or None; decided as it decides, without synthesizing the frames."""
    try:
        _planned(entry, children)
    except CannotReplay as exc:
        return exc.reason
    return None


def _planned(entry: Conntrack, children: tuple[Conntrack, ...]
             ) -> tuple[Callable[[], list[bytes]], str, str]:
    """(what makes *entry*'s frames, the first packet's actions, the others'): every check
    that may refuse the entry runs here, before any frame is made."""
    commit, follow = _commit_actions(entry), f"ct(zone={entry.zone})"
    if entry.helper:  # the ALG sees the later packets too
        follow = f"ct(commit,zone={entry.zone},alg={entry.helper})"
    proto = entry.protocol
    if proto == "tcp":
        key = (entry.state_orig or "", entry.state_reply or "")
        for flags in (entry.tcp_flags_orig, entry.tcp_flags_reply):
            if set(filter(None, flags.split("|"))) - {"WINDOW_SCALE"}:
                raise CannotReplay("conntrack", f"TCP flags {flags} cannot be replayed (only "
                                   f"WINDOW_SCALE comes from the packets): {entry.orig}")
        wscale = {"o": entry.wscale_orig if "WINDOW_SCALE" in entry.tcp_flags_orig else None,
                  "r": entry.wscale_reply if "WINDOW_SCALE" in entry.tcp_flags_reply else None}
        steps = TCP_SEQUENCES.get(key) or SEARCHED_TCP_SEQUENCES.get(key)
        reply_first = next((f for s, f in steps or () if s == "r"), "")
        if wscale["r"] is not None and reply_first != "syn|ack":
            steps = SEARCHED_REPLY_SYN.get(key)
        elif wscale["o"] is not None and wscale["r"] is None and "syn" in reply_first:
            steps = SEARCHED_REPLY_NO_SYN.get(key)
        if steps is None:
            raise CannotReplay(
                "conntrack", f"TCP state {key[0]}/{key[1]} cannot be replayed: {entry.orig}"
            )
        data = [_ftp_command(entry, child) for child in children] if entry.helper == "ftp" else []
        if data and steps[:3] != _HS:
            raise CannotReplay("conntrack", f"FTP control connection in state {key[0]}/"
                               f"{key[1]} cannot announce its data connections: {entry.orig}")
        sequence = steps
        return ((lambda: _tcp_frames(_tuple(entry.orig), _tuple(entry.reply), sequence, data,
                                     wscale)), commit, follow)
    number = CT_PROTOCOLS.get(proto) if not proto.isdigit() else int(proto)
    if number is None or number > 255:
        raise RestoreError("conntrack", f"unknown protocol {proto!r}: {entry.orig}")
    replied = entry.timeout is not None and entry.timeout <= REPLIED_TIMEOUT
    return ((lambda: [_datagram(number, _tuple(entry.orig)),
                      *([_datagram(number, _tuple(entry.reply))] if replied else [])]),
            commit, follow)


def _ftp_command(parent: Conntrack, child: Conntrack) -> tuple[str, bytes]:
    """(side, payload) announcing *child*'s data connection on FTP control *parent*."""
    po, co = _tuple(parent.orig), _tuple(child.orig)
    active = co["src"] == po["dst"]  # the server opens the data connection
    ip, port = co["dst"], int(co["dport"])
    if ":" in ip:
        if active:
            return "o", f"EPRT |2|{ip}|{port}|\r\n".encode()
        return "r", f"229 Entering Extended Passive Mode (|||{port}|)\r\n".encode()
    numbers = ",".join([*ip.split("."), str(port >> 8), str(port & 0xFF)])
    if active:
        return "o", f"PORT {numbers}\r\n".encode()
    return "r", f"227 Entering Passive Mode ({numbers})\r\n".encode()


def _tcp_frames(
    o: dict[str, str], r: dict[str, str], steps: tuple[tuple[str, str], ...],
    data: list[tuple[str, bytes]] | None = None, wscale: dict[str, int | None] | None = None,
) -> list[bytes]:
    """The frames of *steps*; *data* (side, payload) is sent right after the handshake;
    *wscale*: per side, the window-scale option its SYN carries."""
    nxt = {"o": _X, "r": _Y}
    out = []
    planned = list(steps)
    if data:
        planned[3:3] = [(side, "psh|ack") for side, _ in data]
    payloads = iter(payload for _, payload in data or ())
    for i, (side, flags) in enumerate(planned):
        peer = "r" if side == "o" else "o"
        t = o if side == "o" else r
        ack = 0 if flags == "syn" else nxt[peer]
        payload = next(payloads) if flags == "psh|ack" and i >= 3 else b""
        out.append(
            frame(
                src_ip=t["src"],
                dst_ip=t["dst"],
                proto="tcp",
                sport=int(t["sport"]),
                dport=int(t["dport"]),
                flags=flags,
                seq=nxt[side],
                ack=ack,
                payload=payload,
                wscale=(wscale or {}).get(side) if "syn" in flags else None,
            )
        )
        nxt[side] += len(payload)
        if "syn" in flags or "fin" in flags:
            nxt[side] += 1
    return out


def _datagram(number: int, t: dict[str, str]) -> bytes:
    if number in (1, 58):  # ICMP, ICMPv6
        return frame(src_ip=t["src"], dst_ip=t["dst"], proto=number, icmp_type=int(t["type"]),
                     icmp_code=int(t["code"]), icmp_id=int(t["id"]))
    return frame(src_ip=t["src"], dst_ip=t["dst"], proto=number, sport=int(t.get("sport", 0)),
                 dport=int(t.get("dport", 0)))


def replay_order(entries: list[Conntrack]) -> list[Conntrack]:
    """Parents before the related entries that name them (their expectations come first)."""
    return sorted(entries, key=lambda e: bool(e.parent))


def children_of(entries: list[Conntrack]) -> dict[tuple[int, str], tuple[Conntrack, ...]]:
    """(zone, parent's original tuple) → the related entries naming it."""
    out: dict[tuple[int, str], list[Conntrack]] = {}
    for e in entries:
        if e.parent:
            out.setdefault((e.zone, e.parent), []).append(e)
    return {k: tuple(v) for k, v in out.items()}


def orphan_reason(entry: Conntrack, entries: list[Conntrack]) -> str | None:
    """Why a related *entry* cannot be recreated (its parent is not among *entries*)."""
    if not entry.parent:
        return None
    if any(p.zone == entry.zone and p.orig == entry.parent and p.helper for p in entries):
        return None
    return (f"related connection whose parent ({entry.parent}) is gone or has no helper: "
            f"nothing can recreate the expectation it matched: {entry.protocol} {entry.orig}")


def with_parents_first(first: list[Conntrack], later: list[Conntrack]
                       ) -> tuple[list[Conntrack], list[Conntrack]]:
    """Two replay batches, sent in order: a related entry whose parent is in *later* moves
    to *later* too (its expectation comes from the parent's replay)."""
    later_keys = {(e.zone, e.orig) for e in later}
    moved = [e for e in first if e.parent and (e.zone, e.parent) in later_keys]
    if not moved:
        return first, later
    return [e for e in first if e not in moved], [*later, *moved]


Replayed = dict[tuple[Conntrack, tuple[Conntrack, ...]], list[PacketOut]]
"""(entry, its children) → its packet-outs: what one plan made, for the next plan of the
same entries (the client plans its rehearsal and its live install of the same entries)."""


def conntrack_packet_outs(entries: list[Conntrack], *,
                          related_to: list[Conntrack] | None = None,
                          made: Replayed | None = None) -> list[PacketOut]:
    """The packet-outs that recreate *entries*, parents (with the commands announcing
    their children, looked up in *related_to*, default *entries*) before children;
    CannotReplay before anything for one that cannot.  *made*: packet-outs made before,
    taken from there and added to it."""
    kids = children_of(entries if related_to is None else related_to)
    out: list[PacketOut] = []
    for e in replay_order(entries):
        children = kids.get((e.zone, e.orig), ())
        packets = made.get((e, children)) if made is not None else None
        if packets is None:
            packets = conntrack_packets(e, children)
            if made is not None:
                made[(e, children)] = packets
        out += packets
    return out


def conntrack_lines(entries: list[Conntrack], *, related_to: list[Conntrack] | None = None,
                    made: Replayed | None = None) -> list[str]:
    """Bundle-file lines of :func:`conntrack_packet_outs`."""
    return [p.line() for p in conntrack_packet_outs(entries, related_to=related_to,
                                                    made=made)]


def conntrack_plan(entries: tuple[Conntrack, ...] | list[Conntrack]) -> Iterator[str]:
    """Bundle-file lines for all *entries* (raises before yielding for unreplayable ones)."""
    kids = children_of(list(entries))
    plans = [conntrack_packets(e, kids.get((e.zone, e.orig), ()))
             for e in replay_order(list(entries))]
    for plan in plans:
        for packet_out in plan:
            yield packet_out.line()


DECOY_MAC = "02:00:5e:ff:ff:{:02x}"


@dataclass(frozen=True, slots=True)
class FdbPlan:
    """Decoys to add (``fdb/add`` args), the packet-out lines, decoys to delete afterwards."""

    decoys: tuple[tuple[str, str, int, str], ...]  # (bridge, port name, vlan, mac)
    lines: dict[str, tuple[str, ...]]  # bridge -> packet-out lines


def fdb_plan(
    entries: list[FdbEntry],
    port_names: dict[tuple[str, str], str],
    untagged_vlan: dict[tuple[str, str], int],
    members: dict[tuple[str, str], tuple[str, ...]] | None = None,
) -> FdbPlan:
    """Plan the dynamic entries of *entries* (static ones go through ``fdb/add`` directly).

    *port_names* maps (bridge, OpenFlow port) to the port's name; *untagged_vlan* maps
    (bridge, OpenFlow port) to the VLAN its untagged frames belong to (an access port's
    tag, a native VLAN): an entry in that VLAN is learned from an untagged frame, any
    other from a frame tagged with its VLAN.  *members*: for a bond's member, all the
    bond's members: the frame is sent in on each (the bond drops it on inactive ones).
    """
    taken = {e.mac for e in entries}
    decoy_macs = (m for m in (DECOY_MAC.format(i) for i in range(256)) if m not in taken)
    decoys: dict[tuple[str, str, int], str] = {}
    lines: dict[str, list[str]] = {}
    for e in entries:
        if e.static:
            continue
        key = (e.bridge, e.port, e.vlan)
        if key not in decoys:
            decoys[key] = next(decoy_macs)
        if (e.bridge, e.port) not in port_names:
            raise RestoreError("fdb", f"port {e.port} of {e.bridge} does not exist: {e.mac}")
        tagged = e.vlan and untagged_vlan.get((e.bridge, e.port)) != e.vlan
        pkt = ethernet(src_mac=e.mac, dst_mac=decoys[key], vlan=e.vlan if tagged else None)
        for in_port in (members or {}).get((e.bridge, e.port), (e.port,)):
            lines.setdefault(e.bridge, []).append(PacketOut(in_port, pkt, "NORMAL").line())
    return FdbPlan(
        decoys=tuple((b, port_names[(b, p)], v, mac) for (b, p, v), mac in decoys.items()),
        lines={b: tuple(v) for b, v in lines.items()},
    )


# Every state pair the state machine reaches; the hand-written TCP_SEQUENCES come first.
SEARCHED_TCP_SEQUENCES = _search_tcp_sequences()
# The same, for entries whose reply side announced a window scale (its first packet a SYN).
SEARCHED_REPLY_SYN = _search_tcp_sequences(reply_syn=True)
# ... and for entries where only the original side did (the reply side sent no SYN).
SEARCHED_REPLY_NO_SYN = _search_tcp_sequences(reply_syn=False)
