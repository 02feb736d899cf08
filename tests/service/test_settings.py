"""Settings from SERVING_* environment variables and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import parse_args, settings_help
from service.settings import ServiceSettings


def test_defaults_match_the_documented_ones(monkeypatch):
    for name in ServiceSettings.model_fields:
        monkeypatch.delenv(f"SERVING_{name.upper()}", raising=False)

    settings = ServiceSettings()

    assert settings.models == Path("models")
    assert settings.watch_interval_s == 2.0
    assert settings.max_queue_delay_ms == 0.0
    assert settings.batches_in_flight == 1
    assert settings.max_body_bytes == 20_000_000
    assert settings.provider == "auto"


def test_every_setting_is_read_from_its_serving_environment_variable(monkeypatch):
    monkeypatch.setenv("SERVING_MODELS", "/srv/models")
    monkeypatch.setenv("SERVING_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("SERVING_PAD_BATCHES", "true")
    monkeypatch.setenv("SERVING_PROVIDER", "cpu")

    settings = ServiceSettings()

    assert settings.models == Path("/srv/models")
    assert settings.max_batch_size == 16
    assert settings.pad_batches is True
    assert settings.provider == "cpu"


def test_lists_are_comma_separated_in_the_environment(monkeypatch):
    monkeypatch.setenv("SERVING_REGIONS", "campsite-1, campsite-2,marin")
    monkeypatch.setenv("SERVING_MODEL_NAMES", "digits")

    settings = ServiceSettings()

    assert settings.regions == ["campsite-1", "campsite-2", "marin"]
    assert settings.model_names == ["digits"]


def test_explicit_values_override_the_environment(monkeypatch):
    monkeypatch.setenv("SERVING_PORT", "9000")

    assert ServiceSettings(port=7000).port == 7000


def test_invalid_value_is_a_validation_error_naming_the_setting(monkeypatch):
    monkeypatch.setenv("SERVING_PROVIDER", "tpu")

    with pytest.raises(ValidationError, match="provider"):
        ServiceSettings()


def test_queue_must_hold_at_least_one_batch():
    with pytest.raises(ValidationError, match="max_queue_size"):
        ServiceSettings(max_batch_size=32, max_queue_size=8)


def test_unknown_regions_are_labelled_other():
    settings = ServiceSettings(regions=["marin"])

    assert settings.region_label("marin") == "marin"
    assert settings.region_label("atlantis") == "other"
    assert settings.region_label(None) == "other"


def test_every_setting_has_a_description_and_appears_in_the_help():
    text = settings_help()

    for name, field in ServiceSettings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"SERVING_{name.upper()}" in text


def test_command_line_takes_models_host_port_and_rollout():
    args = parse_args(["--models", "repo/", "--host", "127.0.0.1", "--port", "9001", "--rollout", "r.yaml"])

    settings = ServiceSettings(**{k: v for k, v in vars(args).items() if v is not None})

    assert (settings.models, settings.host, settings.port, settings.rollout) == (
        Path("repo/"),
        "127.0.0.1",
        9001,
        Path("r.yaml"),
    )
