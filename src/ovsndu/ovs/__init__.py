"""Adapters that talk to Open vSwitch: JSON-RPC (unixctl, OVSDB), ovs-ofctl, sandboxes."""
