"""What a start on a platform says about what outlives the container, through a real
`python server.py` with the platform's own variables set."""

from __future__ import annotations

import signal
from pathlib import Path

from services.platform import on_a_volume
from tests.support import ServerProcess, run_server_once


def test_a_persistent_database_without_an_encryption_key_refuses_to_start(tmp_path: Path):
    env = {
        "RENDER": "true",
        "RENDER_SERVICE_ID": "srv-test",
        # Never reached: the check comes before any connection.
        "DATABASE_URL": "postgresql://wakeful@127.0.0.1:1/none",
    }
    code, output = run_server_once(tmp_path / "data", env)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "SESSION_ENCRYPTION_KEY is not set" in lines[0]
    assert "on Render" in lines[0]


def test_sqlite_on_the_containers_disk_warns_at_every_start(tmp_path: Path):
    env = {"RAILWAY_ENVIRONMENT_NAME": "production", "BOT_ENGINE": "none"}
    for _ in range(2):
        with ServerProcess(tmp_path / "data", env) as server:
            server.wait_ready()
            warnings = [line for line in server.lines if "💥 On Railway with SQLite" in line]
            assert len(warnings) == 1, server.log
            assert "WARNING" in warnings[0]
            assert "DATABASE_URL" in warnings[0]
            assert server.stop(signal.SIGTERM) == 0


def test_a_railway_volume_at_data_dir_counts_as_persistent(tmp_path: Path):
    volume = {"RAILWAY_VOLUME_MOUNT_PATH": str(tmp_path)}
    assert on_a_volume(tmp_path / "data", volume)
