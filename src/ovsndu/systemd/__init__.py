"""systemd integration: sd_notify (notify), the journald sink (journal), D-Bus (dbus) and
installing the unit drop-in (unit)."""
