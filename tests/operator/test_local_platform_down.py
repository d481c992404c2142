"""``local down`` leaves nothing behind outside the state folder.

Ray's socket paths limit its temp folder's length, so a long state folder puts Ray's files
under ``/tmp/mlplane-ray-<digest>`` instead of ``<state>/ray``. ``down`` must remove that
folder (every test run and every demo in a deep checkout left one, 8 MiB each); a folder
inside the state folder stays with it (its logs are the user's to read or delete).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from mlplane.operator.platforms.local import LocalPlatform, Ports, Server, State


def _stopped_platform(state_dir: Path) -> tuple[LocalPlatform, Path]:
    """A platform whose recorded servers have exited (what ``down`` sees after a crash)."""
    platform = LocalPlatform(state_dir, Ports())
    ray_temp = platform._ray_temp_dir()
    (ray_temp / "session_latest" / "logs").mkdir(parents=True)
    (ray_temp / "session_latest" / "logs" / "raylet.out").write_text("log\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    server = Server(pid=gone.pid, address="127.0.0.1:1", log=str(state_dir / "ray.log"))
    state_dir.mkdir(parents=True, exist_ok=True)
    State("now", Ports(), str(ray_temp), {"ray": server}).write(platform.state_file)
    return platform, ray_temp


def test_down_removes_rays_folder_under_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("a-deep-checkout-" * 3) / ".mlplane"
    platform, ray_temp = _stopped_platform(deep)
    assert not ray_temp.is_relative_to(deep)  # the fallback under /tmp
    platform.down()
    assert not ray_temp.exists()
    assert platform.state() is None


def test_down_keeps_rays_folder_inside_the_state_folder() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        platform, ray_temp = _stopped_platform(Path(short) / "s")
        assert ray_temp.is_relative_to(Path(short))
        platform.down()
        assert (ray_temp / "session_latest" / "logs" / "raylet.out").exists()
