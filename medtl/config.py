"""Experiment configuration: YAML -> validated typed objects -> explicit arguments.

Unknown keys, wrong types and invalid values are rejected with the field's dotted path, the value and a
suggestion, before any work starts. A run writes its resolved config next to its results.

Example:
    >>> cfg = load_config("configs/demo.yaml", overrides={"train.epochs": 2})
    >>> cfg.model.backbone
    'efficientnet_lite0.in1k'
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtl._options import MAX_EPOCHS_UNBOUNDED as MAX_EPOCHS_UNBOUNDED
from medtl._options import check_epochs_bounded, look_up_option
from medtl.errors import ConfigError


def _strategy_names(**tags: Any) -> list[str]:
    """Registered strategy names (the registry in :mod:`medtl.strategies` owns them)."""
    from medtl.strategies import list_strategies

    return list_strategies(**tags)


MAX_CONFIG_BYTES = 1024**2  # a config file is a few KB


@dataclass
class DataConfig:
    path: str = "synthetic"  # dataset folder, CSV manifest, MedMNIST .npz, or "synthetic"
    # how records name the data (run folders keep no data path: folder names can name patients);
    # None: "dataset-" and the start of the data's fingerprint
    name: str | None = None
    val: str | None = None  # validation data from another site (shift-aware validation)
    test: str | None = None  # external test set; default: the dataset's own test split
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    # regex on file names giving the patient id, so carved val/test splits never share a patient
    patient_id_pattern: str | None = None
    # two classes: the finding (index 1 for AUROC, sensitivity, PPV); None = second in sorted order
    positive_class: str | None = None
    min_per_class: int = 5
    window: str = "header"  # DICOM windowing: header | full | percentile
    max_train: int | None = None  # stratified subsample of the training split (learning curves)
    synthetic_per_class: int = 60  # size of the built-in phantom when path == "synthetic"
    synthetic_difficulty: float = 0.5
    # subgroup attributes reported per group (manifest columns or DICOM headers): "sex,age,view"
    subgroups: list[str] | str = field(default_factory=list)
    # several findings per image: the manifest's finding columns (None: found from the values)
    findings: list[str] | None = None
    # what an uncertain label (-1) becomes: ignore (not labelled) | positive | negative
    uncertain: str = "ignore"
    # > 0: the built-in phantom has this many independent findings per image (multi-label)
    synthetic_findings: int = 0


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0.in1k"
    image_size: int | None = None  # None = the backbone's default input size
    weights_path: str | None = None
    allow_download: bool = False


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    max_minutes: float | None = None


@dataclass
class MetricsConfig:
    threshold_rule: str = "youden"  # youden | sensitivity | specificity | fixed
    target: float | None = None  # target sensitivity/specificity, or the fixed threshold
    prevalence: float | None = None  # deployment prevalence for PPV/NPV
    ci_method: str = "delong"  # delong | bootstrap


@dataclass
class OutputConfig:
    out: str = "runs/latest"
    cache_dir: str | None = None  # None = ./.medtl_cache (shared by runs, advice and the app)


@dataclass
class ExperimentConfig:
    """The whole experiment, as validated from YAML or built in Python."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategies: list[str] = field(default_factory=lambda: _strategy_names(default=True))
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-strategy overrides
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> ExperimentConfig:
        """Check values that types alone cannot; raises ConfigError naming the field."""
        names = _strategy_names()
        if not self.strategies:
            raise ConfigError(f"The 'strategies' field is empty; name at least one of {names}.")
        for s in self.strategies:
            look_up_option("strategies", s, names)
        for s in self.params:
            look_up_option("params", s, names)
        look_up_option("data.window", self.data.window, ["header", "full", "percentile"])
        from medtl.subgroups import parse_subgroups

        self.data.subgroups = parse_subgroups(self.data.subgroups, "data.subgroups")
        look_up_option("data.uncertain", self.data.uncertain, ["ignore", "positive", "negative"])
        if self.data.patient_id_pattern:
            from medtl.data import compile_patient_id_pattern

            compile_patient_id_pattern(
                self.data.patient_id_pattern,
                "'data.patient_id_pattern' field",
                " Quote it in YAML with single quotes.",
            )
        look_up_option(
            "metrics.threshold_rule",
            self.metrics.threshold_rule,
            ["youden", "sensitivity", "specificity", "fixed"],
        )
        look_up_option("metrics.ci_method", self.metrics.ci_method, ["delong", "bootstrap"])
        look_up_option("train.precision", self.train.precision, ["auto", "bf16", "fp16", "fp32"])
        for nm, v, lo, hi in (
            ("data.val_fraction", self.data.val_fraction, 0.0, 0.9),
            ("data.test_fraction", self.data.test_fraction, 0.0, 0.9),
            ("data.synthetic_difficulty", self.data.synthetic_difficulty, 0.0, 1.0),
        ):
            if not lo <= v <= hi:
                raise ConfigError(f"The {nm!r} field must be in [{lo}, {hi}]. Got {v!r}.")
        for nm, v in (
            ("train.epochs", self.train.epochs),
            ("train.batch_size", self.train.batch_size),
        ):
            if v < 1:
                raise ConfigError(f"The {nm!r} field must be >= 1. Got {v!r}.")
        if self.model.image_size is not None and not 16 <= self.model.image_size <= 1024:
            raise ConfigError(
                f"The 'model.image_size' field must be in [16, 1024]. Got {self.model.image_size}."
            )
        _validate_values(self)
        if self.metrics.prevalence is not None and not 0 < self.metrics.prevalence < 1:
            raise ConfigError(
                f"The 'metrics.prevalence' field must be in (0, 1). Got {self.metrics.prevalence!r}."
            )
        if (
            self.metrics.threshold_rule in ("sensitivity", "specificity", "fixed")
            and self.metrics.target is None
        ):
            raise ConfigError(
                f"metrics.threshold_rule={self.metrics.threshold_rule!r} needs 'metrics.target' "
                "(e.g. 0.9 for a target sensitivity of 90%)."
            )
        return self


DEVICES = ("auto", "cpu", "cuda", "mps")  # and "cuda:<index>"
_MAX_SEED = 2**32 - 1
# A config is a few hundred values; more means YAML aliases expanding exponentially ("billion
# laughs": 525 bytes that would take hours to copy), or a self-referencing structure.
MAX_CONFIG_VALUES = 100_000


def _bad(field: str, value: Any, need: str, fix: str = "") -> ConfigError:
    return ConfigError(
        f"The {field!r} field must be {need}. Got {value!r}.{' ' + fix if fix else ''}"
    )


def _finite(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(field, value, "a number")
    if not math.isfinite(value):
        raise _bad(field, value, "a finite number")
    return float(value)


def _positive(field: str, value: Any, fix: str = "") -> None:
    if _finite(field, value) <= 0:
        raise _bad(field, value, "> 0", fix)


def _at_least(field: str, value: Any, low: int, fix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(field, value, f"an integer >= {low}", fix)


def _seed(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SEED:
        raise _bad(field, value, f"an integer in [0, {_MAX_SEED}]", "e.g. 0.")


def check_device(field: str, value: Any) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``; did-you-mean for the rest."""
    if isinstance(value, str) and re.fullmatch(r"cuda:\d+", value):
        return
    look_up_option(field, value, DEVICES)


def _check_folder(field: str, value: str | None) -> None:
    if value and os.path.lexists(value) and not os.path.isdir(value):
        raise ConfigError(
            f"The {field!r} field must be a folder, but {value!r} is an existing file. Give a "
            "folder path (it is created if missing), or move the file away."
        )


def _non_negative(field: str, value: Any) -> None:
    if _finite(field, value) < 0:
        raise _bad(field, value, ">= 0")


def _fraction(field: str, value: Any) -> None:
    if not 0 <= _finite(field, value) < 1:
        raise _bad(field, value, "in [0, 1)")


def _decay(field: str, value: Any) -> None:
    if value is not None and not 0 < _finite(field, value) <= 1:
        raise _bad(field, value, "in (0, 1] or null")


# Checks of the per-strategy parameters a config may override (``params.<strategy>.<name>``).
_BATCH_FIX = "A batch needs at least 2 images (batch statistics and the last-batch rule)."
_PARAM_CHECKS: dict[str, Any] = {
    "lr": lambda f, v: _positive(f, v, "e.g. 1e-3."),
    "backbone_lr_ratio": lambda f, v: _positive(f, v, "e.g. 0.1."),
    "weight_decay": _non_negative,
    "l2sp": _non_negative,
    "augment_strength": _non_negative,
    "warmup_frac": _fraction,
    "layer_decay": _decay,
    "batch_size": lambda f, v: v is None or _at_least(f, v, 2, _BATCH_FIX),
    "epochs": lambda f, v: _at_least(f, v, 1),
    "patience": lambda f, v: v is None or _at_least(f, v, 0),
    "min_steps_per_epoch": lambda f, v: _at_least(f, v, 1),
    "trainable_stages": lambda f, v: _at_least(f, v, 0),
    "freeze_stages": lambda f, v: v is None or _at_least(f, v, 0, "0 trains every layer."),
    "max_minutes": lambda f, v: v is None or _positive(f, v, "Or leave it out (no limit)."),
    "seed": _seed,
    "device": check_device,
}


def _check_cs(field: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        _at_least(field, value, 1)
        return
    if not isinstance(value, list | tuple) or not value:
        raise _bad(field, value, "a non-empty list of positive numbers", "e.g. [0.01, 0.1, 1, 10].")
    for i, c in enumerate(value):
        _positive(f"{field}[{i}]", c)


def _check_finite_tree(field: str, value: Any) -> None:
    """Every number anywhere under ``value`` is finite (NaN/inf never reach a strategy)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(field, value, "a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite_tree(f"{field}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_finite_tree(f"{field}[{i}]", v)


def _validate_values(cfg: ExperimentConfig) -> None:
    """Values that type checks let through but that cannot work (issue 16): refused before any data
    is read, naming the field, the value and a fix."""
    if cfg.train.batch_size < 2:
        raise _bad("train.batch_size", cfg.train.batch_size, "an integer >= 2", _BATCH_FIX)
    _seed("train.seed", cfg.train.seed)
    _seed("data.split_seed", cfg.data.split_seed)
    check_device("train.device", cfg.train.device)
    if cfg.train.max_minutes is not None:
        _positive("train.max_minutes", cfg.train.max_minutes, "Or leave it out (no limit).")
    if cfg.data.max_train is not None:
        _at_least("data.max_train", cfg.data.max_train, 2, "Or leave it out (use every image).")
    _at_least("data.min_per_class", cfg.data.min_per_class, 1)
    _at_least("data.synthetic_per_class", cfg.data.synthetic_per_class, 1)
    if cfg.data.path == "synthetic":
        from medtl.data.synth import check_phantom_size

        check_phantom_size(cfg.data.synthetic_per_class, field="data.synthetic_per_class")
    if cfg.metrics.target is not None:
        t = _finite("metrics.target", cfg.metrics.target)
        if not 0 <= t <= 1:
            raise _bad("metrics.target", t, "in [0, 1]", "e.g. 0.9 for 90% sensitivity.")
    _check_folder("output.out", cfg.output.out)
    _check_folder("output.cache_dir", cfg.output.cache_dir)
    for strategy, params in cfg.params.items():
        for name, value in params.items():
            field = f"params.{strategy}.{name}"
            _check_finite_tree(field, value)
            if name == "Cs":
                _check_cs(field, value)
            elif name in _PARAM_CHECKS:
                _PARAM_CHECKS[name](field, value)
    for strategy in cfg.strategies:
        own = cfg.params.get(strategy, {})
        check_epochs_bounded(
            own.get("epochs", cfg.train.epochs),
            own.get("patience", _DEFAULT_ON),
            own.get("max_minutes", cfg.train.max_minutes),
            field=f"params.{strategy}.epochs" if "epochs" in own else "train.epochs",
        )


def check_batch_sizes(cfg: ExperimentConfig, n_train: int, trained: Iterable[str]) -> None:
    """Refuse, once the training split is known and before any image is decoded, a batch size larger
    than the training split for each strategy in ``trained`` (those trained in batches; the others
    do not use ``train.batch_size``): every batch would repeat the data to fill itself, so
    ``batch_size: 100000`` on 80 images allocates 100,000 images per step."""
    for strategy in cfg.strategies:
        if strategy not in trained:
            continue
        own = cfg.params.get(strategy, {})
        size = own.get("batch_size", cfg.train.batch_size)
        field = f"params.{strategy}.batch_size" if "batch_size" in own else "train.batch_size"
        if isinstance(size, int) and n_train and size > n_train:
            raise ConfigError(
                f"The {field!r} field is {size}, larger than the training split ({n_train} "
                f"images): a batch cannot hold more images than there are. Use {field} <= "
                f"{n_train} (e.g. {min(32, n_train)})."
            )


_DEFAULT_ON = object()  # a strategy's own default patience (early stopping on)


def _check_size(data: Any, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse a config holding more than ``limit`` values once YAML aliases are expanded."""
    stack, n = [data], 0
    while stack:
        item = stack.pop()
        n += 1
        if n > limit:
            raise ConfigError(
                f"The config holds more than {limit} values once its YAML aliases (&anchor / "
                "*alias) are expanded, or refers to itself; write the values out instead of "
                "nesting aliases."
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(
                f"The {where!r} field must be a mapping. Got {type(value).__name__} {value!r}."
            )
        return _from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"The {where!r} field must be a list. Got {value!r}.")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"The {where!r} field must be a mapping. Got {value!r}.")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"The {where!r} field must be true or false. Got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"The {where!r} field must be an integer. Got {value!r}.")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-3" as a string
            except ValueError:
                pass
        raise ConfigError(f"The {where!r} field must be a number. Got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"The {where!r} field must be a string. Got {value!r}.")
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown config field {path!r}.{hint} Valid fields here: {names}.")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain dict (e.g. parsed YAML) into an :class:`ExperimentConfig`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"A config must be a YAML mapping at the top level. Got {type(data).__name__}."
        )
    _check_size(data)
    return _from_dict(ExperimentConfig, data).validate()


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Read a YAML config (or start from defaults), apply dotted ``overrides``, validate.

    Relative data paths in the file are resolved against the config file's folder when they exist there.
    """

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(
                f"Config file {str(p)!r} does not exist. Check the path (see configs/ for examples)."
            )
        from medtl._fileio import UnsafeFileError, read_regular_bytes

        try:
            text = read_regular_bytes(p, MAX_CONFIG_BYTES).decode("utf-8")
        except UnsafeFileError as exc:
            raise ConfigError(f"Config file {str(p)!r} {exc.reason}.") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"Config file {str(p)!r} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8."
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"Config file {str(p)!r} cannot be read ({exc.strerror or type(exc).__name__})."
            ) from None
        data = load_yaml_text(text, f"Config file {str(p)!r}")
        if data is None or data == {}:
            raise ConfigError(
                f"Config file {str(p)!r} is empty (no fields): it would silently run every "
                "default. Write the fields you mean (e.g. `data: {path: my_images/}`; see "
                "configs/ for examples), or leave the config out to run the defaults on purpose."
            )
        if not isinstance(data, dict):
            raise ConfigError(f"Config file {str(p)!r} must hold a mapping at the top level.")
        _resolve_relative_paths(data, p.parent)
    for k, v in (overrides or {}).items():
        if v is not None:
            _set_dotted(data, k, v)
    return config_from_dict(data)


def _strict_loader(where: str) -> type:
    """A yaml SafeLoader that refuses a key written twice in one mapping (YAML keeps the last one
    silently, so ``epochs: 5`` ... ``epochs: 50`` would run 50 without a word)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                    seen.setdefault(key, line)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not None:
                    raise ConfigError(
                        f"{where}: the key {key!r} appears twice in one mapping (lines {first} "
                        f"and {line}); YAML would silently keep the last. Keep one of them."
                    )
            return super().construct_mapping(node, deep)

    return StrictLoader


def load_yaml_text(text: str, where: str = "YAML text") -> Any:
    """Parse YAML like ``yaml.safe_load``, but refuse duplicate keys and over-deep nesting.

    ``where`` starts every error message (e.g. ``"Config file 'a.yaml'"``).

    Raises:
        ConfigError: invalid YAML, a key written twice in one mapping, or nesting too deep.

    Example:
        >>> load_yaml_text("train: {epochs: 2}")
        {'train': {'epochs': 2}}
    """
    import yaml

    loader = _strict_loader(where)(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config.") from None
    finally:
        loader.dispose()


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Data paths that do not exist from the working folder are tried relative to the config's folder."""
    section = data.get("data")
    if not isinstance(section, dict):
        return
    for key in ("path", "val", "test"):
        v = section.get(key)
        if (
            isinstance(v, str)
            and v != "synthetic"
            and not Path(v).is_absolute()
            and not Path(v).exists()
        ):
            for cand in (base / v, base.parent / v):
                if cand.exists():
                    section[key] = str(cand.resolve())
                    break


def save_config(cfg: ExperimentConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    from medtl._fileio import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict as dotted keys ("train.epochs": 5); per-strategy ``params`` stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "params":
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out
