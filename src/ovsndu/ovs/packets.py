"""Synthesized Ethernet frames with correct checksums (pure: fields in, bytes out).

Userspace conntrack checks L3/L4 checksums, so replayed packets must be exact.
Supports IPv4 and IPv6 with TCP, UDP, ICMP and ICMPv6 (echo-like: type, code, id),
SCTP (common header with its CRC32c) and any other IP protocol (by number; the
first four bytes carry the ports, zero unless given).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct

ETH_IP = 0x0800
ETH_IP6 = 0x86DD
PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10}
_NAMES = {n: name for name, n in PROTO.items()}


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), SCTP's checksum."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@functools.lru_cache(maxsize=1024)
def _mac(text: str) -> bytes:
    return bytes(int(b, 16) for b in text.split(":"))


def _packed(text: str) -> bytes:
    """An IPv4 or IPv6 address's bytes (the C parser first: a replay plan makes hundreds
    of thousands; ``ipaddress`` for what it refuses, which raises ValueError if invalid)."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        return ipaddress.ip_address(text).packed


def frame(*, src_ip: str, dst_ip: str, proto: str | int, sport: int = 0, dport: int = 0,
          flags: str = "", seq: int = 0, ack: int = 0, icmp_type: int = 8, icmp_code: int = 0,
          icmp_id: int = 0, src_mac: str = "02:00:00:00:00:01",
          dst_mac: str = "02:00:00:00:00:02", payload: bytes = b"",
          wscale: int | None = None) -> bytes:
    """One Ethernet frame; *flags* like ``"syn|ack"`` for TCP; *proto* a name or a number;
    *wscale*: a TCP window-scale option with this shift."""
    src, dst = _packed(src_ip), _packed(dst_ip)
    if len(src) != len(dst):
        raise ValueError(f"addresses of different families: {src_ip} {dst_ip}")
    v6 = len(src) == 16
    number = PROTO[proto] if isinstance(proto, str) else proto
    if not 0 <= number <= 255:
        raise ValueError(f"IP protocol {number} out of range")
    proto = _NAMES.get(number, number)
    at: int | None
    if proto == "tcp":
        bits = 0
        for name in filter(None, flags.split("|")):
            bits |= TCP_FLAGS[name]
        options = b"" if wscale is None else bytes((1, 3, 3, wscale))  # NOP, window scale
        offset = (20 + len(options)) // 4
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, offset << 4, bits, 65535, 0, 0)
        l4 += options + payload
        at = 16
    elif proto == "udp":
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        at = 6
    elif proto in ("icmp", "icmpv6"):
        l4 = struct.pack("!BBHHH", icmp_type, icmp_code, 0, icmp_id, 1) + payload
        at = 2
    elif proto == "sctp":
        # Common header; its checksum is a CRC32c over the packet, stored little-endian.
        l4 = struct.pack("!HHII", sport, dport, 0, 0) + payload
        l4 = l4[:8] + struct.pack("<I", crc32c(l4)) + l4[12:]
        at = None
    else:
        l4 = struct.pack("!HH", sport, dport) + b"\0" * 4 + payload
        at = None
    if at is not None:
        if v6:
            pseudo = src + dst + struct.pack("!IxxxB", len(l4), number)
        else:
            pseudo = src + dst + struct.pack("!xBH", number, len(l4))
        use_pseudo = proto != "icmp"
        checksum = _csum((pseudo if use_pseudo else b"") + l4)
        if proto == "udp" and checksum == 0:
            checksum = 0xFFFF
        l4 = l4[:at] + struct.pack("!H", checksum) + l4[at + 2:]
    if v6:
        l3 = struct.pack("!IHBB", 6 << 28, len(l4), number, 64) + src + dst
        eth_type = ETH_IP6
    else:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, number, 0,
                             src, dst)
        l3 = header[:10] + struct.pack("!H", _csum(header)) + header[12:]
        eth_type = ETH_IP
    return _mac(dst_mac) + _mac(src_mac) + struct.pack("!H", eth_type) + l3 + l4


def ethernet(*, src_mac: str, dst_mac: str, eth_type: int = 0x88B5,
             payload: bytes = b"\0" * 46, vlan: int | None = None) -> bytes:
    """A non-IP frame (optionally 802.1Q tagged), e.g. for MAC learning."""
    tag = struct.pack("!HH", 0x8100, vlan & 0x0FFF) if vlan else b""
    return _mac(dst_mac) + _mac(src_mac) + tag + struct.pack("!H", eth_type) + payload
