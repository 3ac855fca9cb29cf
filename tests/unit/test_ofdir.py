"""Private OVS_RUNDIR for a vswitchd under restore: sockets stay private until published."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from ovsndu.ovs import ofdir
from ovsndu.ovs.ofdir import PrivateRundir


def listen(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen()
    return s


def reaches(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        try:
            c.connect(str(path))
        except OSError:
            return False
    return True


def test_sockets_are_private_until_published(tmp_path: Path) -> None:
    p = PrivateRundir.create(tmp_path, "t1")
    # What vswitchd sees as OVS_RUNDIR resolves to the private directory.
    assert os.path.realpath(p.link) == str(p.private)
    assert (p.private.stat().st_mode & 0o777) == 0o700
    mgmt = listen(p.link / "br0.mgmt")
    ctl = listen(p.link / "ovs-vswitchd.42.ctl")
    assert not reaches(tmp_path / "br0.mgmt")
    assert p.share_ctl(42) and reaches(tmp_path / "ovs-vswitchd.42.ctl")
    assert p.publish() == ["br0.mgmt"]
    # The listening socket keeps listening under its new name; later bridges land here.
    assert reaches(tmp_path / "br0.mgmt")
    assert os.path.realpath(p.link) == str(tmp_path)
    later = listen(p.link / "br1.mgmt")
    assert (tmp_path / "br1.mgmt").exists()
    assert not p.private.exists()
    for s in (mgmt, ctl, later):
        s.close()


def test_hide_and_unhide_the_old_sockets(tmp_path: Path) -> None:
    old = listen(tmp_path / "br0.mgmt")
    hidden = ofdir.hide(tmp_path, "t2")
    assert not (tmp_path / "br0.mgmt").exists()
    assert reaches(hidden.directory / "br0.mgmt")  # ovsndu's last read goes through here
    hidden.unhide()
    assert reaches(tmp_path / "br0.mgmt") and not hidden.directory.exists()
    old.close()


def test_unused_private_rundirs_are_removed(tmp_path: Path) -> None:
    p = PrivateRundir.create(tmp_path, "t3")
    ofdir.remove_unused(tmp_path)  # no live process has it as OVS_RUNDIR
    assert not p.link.is_symlink() and not p.private.exists()


def test_the_database_link_lives_and_goes_with_its_private_rundir(tmp_path: Path) -> None:
    """A DPDK build's standby reaches the database through ``.of-<id>.db.sock``
    (ovs/preinit.py): kept while a live process has ``.of-<id>`` as OVS_RUNDIR,
    followed to whatever it points at now, removed with the rest when unused."""
    live, used = PrivateRundir.create(tmp_path, "t4"), PrivateRundir.create(tmp_path, "t5")
    first, second = tmp_path / "private.sock", tmp_path / "db.sock"
    with listen(first), listen(second) as real:
        for p in (live, used):
            p.db_link.symlink_to(first)
        assert reaches(live.db_link)
        tmp = live.db_link.with_name("swap")
        tmp.symlink_to(second)
        os.replace(tmp, live.db_link)  # as Preinit.switch does
        real.settimeout(2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(live.db_link))
            real.accept()[0].close()  # the connection reached the second socket
    proc = subprocess.Popen(["sleep", "30"], env={**os.environ, "OVS_RUNDIR": str(live.link)})
    try:
        ofdir.remove_unused(tmp_path)
        assert live.db_link.is_symlink() and live.link.is_symlink()
        assert not used.db_link.is_symlink() and not used.link.is_symlink()
    finally:
        proc.kill()
        proc.wait()
    live.discard()
    assert not live.db_link.is_symlink()
