"""When `python -m flows.train` may launch Prefect's temporary server before its imports: only
where no source of Prefect settings it can see configures the API (otherwise Prefect's own
settings decide, after the imports)."""

from __future__ import annotations

import pytest

from flows.server import _api_configured_elsewhere


@pytest.fixture
def clean(tmp_path, monkeypatch):
    """No Prefect variables, an empty Prefect home, an empty working directory."""
    import os

    for key in [k for k in os.environ if k.startswith("PREFECT_")]:
        monkeypatch.delenv(key)
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("PREFECT_SERVER_API_PORT", "1")  # never a server left running here
    monkeypatch.chdir(cwd)
    return home, cwd


def test_nothing_configured_means_the_temporary_server(clean):
    assert _api_configured_elsewhere() is False


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PREFECT_API_URL", "http://server:4200/api"), ("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")],
)
def test_an_environment_setting_leaves_the_choice_to_prefect(clean, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert _api_configured_elsewhere() is True


@pytest.mark.parametrize("name", [".env", "prefect.toml"])
def test_a_settings_file_in_the_working_directory_leaves_the_choice_to_prefect(clean, name):
    (clean[1] / name).write_text("PREFECT_API_URL=http://server:4200/api\n")
    assert _api_configured_elsewhere() is True


def test_pyproject_settings_leave_the_choice_to_prefect(clean):
    (clean[1] / "pyproject.toml").write_text('[tool.prefect.api]\nurl = "http://x/api"\n')
    assert _api_configured_elsewhere() is True
    (clean[1] / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert _api_configured_elsewhere() is False


def test_the_active_profile_decides(clean, monkeypatch):
    (clean[0] / "profiles.toml").write_text(
        'active = "local"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
        '[profiles.ephemeral]\nPREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n'
    )
    assert _api_configured_elsewhere() is True
    monkeypatch.setenv("PREFECT_PROFILE", "ephemeral")
    assert _api_configured_elsewhere() is False


def test_flow_runs_send_heartbeats_only_to_a_server_that_outlives_the_process(monkeypatch):
    """Regression (session 19): every command-line run waited up to 1 s at its end for its flow
    run's heartbeat thread (it sleeps in one-second steps), though the temporary server the
    run started stops with it and never reads a heartbeat. The flow engine starts that thread
    only when this setting is not None."""
    from prefect import flow
    from prefect.settings import get_current_settings

    import flows.server as server

    @flow
    def heartbeat_frequency() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    with server.heartbeats_only_to_a_lasting_server():  # the test harness's server: configured
        assert heartbeat_frequency() is not None
    monkeypatch.setattr(server, "_EARLY", [object()])  # as when this process launched it
    with server.heartbeats_only_to_a_lasting_server():
        assert heartbeat_frequency() is None
    assert heartbeat_frequency() is not None  # only inside the block
