"""The start-up helper every service uses to read its settings (``settings_or_exit``)."""

from __future__ import annotations

import pytest

from chat_common.settings import settings_or_exit
from history.config import Settings as HistorySettings


@pytest.mark.parametrize("variable", ["HISTORY_MONGODB_URI", "MONGODB_URI"])
def test_a_bad_secret_names_its_variable_and_never_shows_its_value(
    variable: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, "http://admin:s3cret@db.example:27017/")
    with pytest.raises(SystemExit) as stopped:
        settings_or_exit(HistorySettings)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "HISTORY_MONGODB_URI" in err and "HISTORY_HISTORY_" not in err
    assert "must start with mongodb://" in err
    assert "s3cret" not in err and "db.example" not in err


def test_a_bad_plain_value_is_shown(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HISTORY_PORT", "eighty")
    with pytest.raises(SystemExit):
        settings_or_exit(HistorySettings)
    err = capsys.readouterr().err
    assert "HISTORY_PORT" in err and "(got 'eighty')" in err
