"""Config validation: YAML -> typed object, with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtl.config import config_from_dict, load_config, save_config
from medtl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.strategies


@pytest.mark.parametrize(
    "data, match",
    [
        ({"trian": {}}, "Did you mean 'train'"),
        ({"train": {"epochs": "many"}}, "'train.epochs' field must be an integer"),
        ({"train": {"epochs": 0}}, "'train.epochs' field must be >= 1"),
        ({"strategies": ["fine_tunin"]}, "Did you mean 'fine_tuning'"),
        ({"strategies": []}, "'strategies' field is empty"),
        ({"data": {"window": "hedaer"}}, "Did you mean 'header'"),
        ({"metrics": {"threshold_rule": "sensitivity"}}, "needs 'metrics.target'"),
        ({"metrics": {"prevalence": 2}}, "'metrics.prevalence' field must be in"),
        ({"model": {"allow_download": "yes"}}, "true or false"),
        ([1, 2], "mapping at the top level"),
    ],
)
def test_invalid_configs_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_round_trip_and_overrides(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "demo.yaml", {"train.epochs": 2, "params": {"fine_tuning": {"lr": 1e-4}}}
    )
    assert cfg.train.epochs == 2 and cfg.params["fine_tuning"]["lr"] == 1e-4
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_scientific_notation_string_is_a_number():
    cfg = config_from_dict({"metrics": {"threshold_rule": "fixed", "target": "5e-1"}})
    assert cfg.metrics.target == 0.5


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_demo_yaml_matches_the_embedded_demo():
    from medtl.cli._commands import DEMO_CONFIG

    shipped = load_config(ROOT / "configs" / "demo.yaml").to_dict()
    embedded = config_from_dict(DEMO_CONFIG).to_dict()
    shipped.pop("output"), embedded.pop("output")
    assert shipped == embedded  # configs/demo.yaml documents exactly what `medtl demo` runs
