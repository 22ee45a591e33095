"""The documentation stays true: every setting is in the README, the AsyncAPI file is current."""

from pathlib import Path

import pytest

from services.admin.settings import AdminSettings
from services.dispatcher.settings import DispatcherSettings
from services.extractor.settings import ExtractorSettings
from services.notifier.settings import NotifierSettings
from services.scheduler.settings import SchedulerSettings
from shared.asyncapi import render
from shared.cli.common import CliSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = [SchedulerSettings, ExtractorSettings, DispatcherSettings, NotifierSettings, CliSettings, AdminSettings]


@pytest.mark.parametrize("settings_class", SETTINGS, ids=lambda cls: cls.__name__)
def test_the_readme_documents_every_setting(settings_class):
    readme = (ROOT / "README.md").read_text()
    prefix = settings_class.model_config["env_prefix"]
    missing = [
        f"{prefix}{name}".upper()
        for name in settings_class.model_fields
        if f"`{prefix}{name}`".upper() not in readme.upper()
    ]
    assert missing == []


def test_the_asyncapi_document_matches_the_event_models():
    assert (ROOT / "docs" / "asyncapi.yaml").read_text() == render(), "run `make docs` and commit the result"
