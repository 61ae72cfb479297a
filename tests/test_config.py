"""Config validation: YAML -> typed object, with errors that name the field."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize(
    "data, match",
    [
        ({"params": {"fine_tuning": {"lr": 0}}}, r"'params.fine_tuning.lr' field must be > 0"),
        ({"params": {"fine_tuning": {"lr": float("nan")}}}, "finite number"),
        ({"params": {"fine_tuning": {"lr": "1e-3x"}}}, "must be a number"),
        ({"params": {"fine_tuning": {"batch_size": 1}}}, "at least 2 images"),
        ({"params": {"feature_extraction": {"Cs": []}}}, "non-empty list"),
        ({"params": {"feature_extraction": {"Cs": [1, -1]}}}, r"Cs\[1\]' field must be > 0"),
        ({"params": {"fine_tuning": {"device": "quantum"}}}, "quantum"),
        ({"params": {"fine_tuning": {"nested": {"x": float("inf")}}}}, "finite"),
        ({"train": {"batch_size": 1}}, r"'train.batch_size' field must be an integer >= 2"),
        ({"train": {"max_minutes": -1}}, r"'train.max_minutes' field must be > 0"),
        ({"train": {"max_minutes": float("nan")}}, "finite"),
        ({"train": {"seed": -3}}, r"'train.seed' field must be an integer in \[0"),
        ({"data": {"split_seed": -1}}, r"data\.split_seed"),
        ({"train": {"device": "quantum"}}, r"'train.device'.*quantum"),
        ({"train": {"device": "cuda:x"}}, r"train\.device"),
        ({"data": {"max_train": -5}}, r"'data.max_train' field must be an integer >= 2"),
        ({"data": {"max_train": 1}}, r"data\.max_train"),
        ({"metrics": {"threshold_rule": "fixed", "target": float("nan")}}, r"metrics\.target"),
        ({"metrics": {"threshold_rule": "sensitivity", "target": 1.5}}, r"in \[0, 1\]"),
    ],
)
def test_values_that_cannot_work_are_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_devices_accepted():
    for dev in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert config_from_dict({"train": {"device": dev}}).train.device == dev


def test_output_pointing_at_a_file_is_refused(tmp_path):
    f = tmp_path / "not_a_folder"
    f.write_text("x")
    with pytest.raises(ConfigError, match=r"'output.out' field must be a folder"):
        config_from_dict({"output": {"out": str(f)}})
    with pytest.raises(ConfigError, match=r"output\.cache_dir"):
        config_from_dict({"output": {"cache_dir": str(f)}})


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    import time

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = "params:\n  fine_tuning:\n" + "".join(f"    {ln}\n" for ln in lines)
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    assert len(bomb) < 1000
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        load_config(path)
    assert time.perf_counter() - t0 < 5


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_config_files_that_are_not_configs(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: Fran\xe7ois\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path)  # a folder
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        load_config(fifo)  # never opened, so it cannot block
