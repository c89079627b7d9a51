"""Issue 26 (temporary files): outputs are written through unpredictable temporary files created with
O_EXCL | O_NOFOLLOW in the target's folder, and a replaced output keeps its mode."""

from __future__ import annotations

import os
import stat

import pytest

from rtseg.safe_io import atomic_write_bytes, check_writable, new_temp, new_temp_dir, temp_path


def test_a_planted_symlink_never_receives_a_byte(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "o.json"
    # the names earlier versions used (.NAME.tmpPID.EXT) and a few guesses of the new form
    for name in (f".o.json.tmp{os.getpid()}.json", ".o.json.tmp.json", ".o.json.probe.tmp.probe"):
        (tmp_path / name).symlink_to(victim)
    atomic_write_bytes(out, b"{}\n")
    check_writable(out)
    temp_path(out).unlink()
    assert victim.read_text() == "precious" and out.read_text() == "{}\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.json.") and not p.is_symlink()]


def test_temporary_names_are_new_files_each_time(tmp_path):
    fd1, a = new_temp(tmp_path / "x.mp4")
    fd2, b = new_temp(tmp_path / "x.mp4")
    os.close(fd1), os.close(fd2)
    assert a != b and a.name.startswith(".x.mp4.") and a.suffix == ".mp4"
    assert stat.S_IMODE(a.stat().st_mode) == 0o600  # private until finished
    d = new_temp_dir(tmp_path / "engine")
    assert d.is_dir() and not any(d.iterdir()) and d.name.startswith(".engine.")


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_replacing_an_output_keeps_its_mode(tmp_path, mode):
    out = tmp_path / "overlay.png"
    out.write_bytes(b"old")
    os.chmod(out, mode)
    atomic_write_bytes(out, b"new")
    assert out.read_bytes() == b"new" and stat.S_IMODE(out.stat().st_mode) == mode
    fresh = tmp_path / "fresh.png"
    atomic_write_bytes(fresh, b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
