"""The command implementations. Each is a thin wrapper over the public API."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from medtl.cli import _exit
from medtl.formatting import format_duration

DEMO_CONFIG: dict[str, Any] = {
    # The embedded demo: synthetic phantom DICOMs, the offline default backbone, CPU-sized settings.
    "name": "demo",
    "data": {"path": "synthetic", "synthetic_per_class": 100, "synthetic_difficulty": 0.6},
    "model": {"backbone": "efficientnet_lite0.in1k", "image_size": 128},
    # strategies: the registry's default comparison (feature extraction, fine-tuning, from scratch)
    "train": {"epochs": 6, "batch_size": 16},
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {
        "data": "data.path",
        "data_name": "data.name",
        "val": "data.val",
        "test": "data.test",
        "subgroups": "data.subgroups",
        "positive_class": "data.positive_class",
        "uncertain": "data.uncertain",
        "patient_id_pattern": "data.patient_id_pattern",
        "out": "output.out",
        "backbone": "model.backbone",
        "weights_path": "model.weights_path",
        "allow_download": "model.allow_download",
        "image_size": "model.image_size",
        "epochs": "train.epochs",
        "batch_size": "train.batch_size",
        "seed": "train.seed",
        "max_train": "data.max_train",
        "device": "train.device",
        "threshold_rule": "metrics.threshold_rule",
        "target": "metrics.target",
        "prevalence": "metrics.prevalence",
    }
    out = {
        dotted: getattr(args, k)
        for k, dotted in mapping.items()
        if getattr(args, k, None) is not None
    }
    if getattr(args, "findings", None):
        out["data.findings"] = _findings_arg(args.findings)
    if getattr(args, "strategies", None):
        out["strategies"] = [s.strip() for s in args.strategies.split(",") if s.strip()]
    return out


def _findings_arg(text: str | None) -> list[str] | None:
    """``--findings A,B,C`` as a list of names (None when not given)."""
    if not text:
        return None
    return [f.strip() for f in text.split(",") if f.strip()]


def _label_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``findings`` / ``uncertain`` for ``load_dataset`` from the data commands' options."""
    out: dict[str, Any] = {}
    if getattr(args, "findings", None):
        out["findings"] = _findings_arg(args.findings)
    if getattr(args, "uncertain", None):
        out["uncertain"] = args.uncertain
    return out


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal; elsewhere the CLI logs one line per step (see _main)."""
    return not getattr(args, "quiet", False) and not getattr(args, "json", False) and _tty()


def _tty() -> bool:
    return sys.stderr.isatty()


def _print_json(obj: Any) -> None:
    """The one machine-readable document on stdout (NaN written as null: valid JSON)."""
    from medtl.formatting import json_safe

    print(json.dumps(json_safe(obj), default=str, indent=1))


def _print_summary(summary: dict[str, Any], out: str) -> None:
    from medtl.strategies import strategy_label

    rows = summary.get("strategies", {})
    print()
    print(
        f"{'strategy':<22}{'test AUROC (95% CI)':<26}{'val AUROC':>10}{'epochs':>8}{'seconds':>9}{'img/s':>8}"
    )
    for name, r in rows.items():
        if r.get("status") != "done":
            print(f"{strategy_label(name):<22}{r.get('status', '?')}: {r.get('error')}")
            continue
        ci = r.get("test_auroc_ci") or [None, None]
        auc = _fmt(r.get("test_auroc"))
        ci_s = f"{auc} ({_fmt(ci[0])}-{_fmt(ci[1])})" if ci[0] is not None else auc
        print(
            f"{strategy_label(name):<22}{ci_s:<26}{_fmt(r.get('val_auroc')):>10}"
            f"{r.get('epochs_run') or '-':>8}"
            f"{r.get('train_seconds', 0):>9.1f}{_fmt(r.get('images_per_s'), 1):>8}"
        )
    for p in summary.get("paired", []):
        if p.get("summary"):
            print(f"  {strategy_label(p['a'])} vs {_label(p['b'])}: {p['summary']}")
    for note in summary.get("notes", []):
        print(f"note: {note}")
    print(f"\nrun folder: {out}")
    if summary.get("report"):
        print(f"report:     {summary['report']}")


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def demo(args: argparse.Namespace) -> int:
    """Synthesise the phantom, compare the three strategies, print a table, say where the report is."""
    from medtl.config import config_from_dict
    from medtl.experiment import compare

    cfg_dict = json.loads(json.dumps(DEMO_CONFIG))
    cfg_dict["output"] = {"out": args.out}
    if args.quick:
        cfg_dict["model"] = {"backbone": "tiny_test", "image_size": 64}
        cfg_dict["data"]["synthetic_per_class"] = 30
        cfg_dict["train"]["epochs"] = 3
    if args.epochs:
        cfg_dict["train"]["epochs"] = args.epochs
    cfg = config_from_dict(cfg_dict)
    from medtl.strategies import strategy_label

    names = ", ".join(strategy_label(n) for n in cfg.strategies)
    _note(
        f"medtl demo: synthetic chest-radiograph phantom (DICOM), backbone {cfg.model.backbone}, "
        f"{cfg.model.image_size}px; {names}",
        args,
    )
    eta = _Eta(cfg, args)
    summary = compare(
        cfg, progress=_progress(args), on_epoch_end=eta.epoch, on_strategy_start=eta.start
    )
    if args.json:
        _print_json(summary)
    else:
        _print_summary(summary, args.out)
    return _status_code(summary)


def _note(text: str, args: argparse.Namespace) -> None:
    """A progress message: stderr, silent with --quiet or --json."""
    if not getattr(args, "quiet", False) and not getattr(args, "json", False):
        print(text, file=sys.stderr, flush=True)


class _Eta:
    """Time left for a whole comparison, said before it starts and after each epoch (stderr).

    The estimate before starting times two training steps of the configured backbone on this
    machine and scales them by the epochs and images of each strategy (feature extraction counts as
    one epoch's worth); after each epoch it is replaced by what was measured so far.
    """

    def __init__(self, cfg: Any, args: argparse.Namespace) -> None:
        import time

        self.args = args
        self.t0 = time.perf_counter()
        self.epochs = int(cfg.train.epochs)
        from medtl.strategies import strategy_tags

        self.units = {
            n: (self.epochs if strategy_tags(n).trains_in_epochs else 1) for n in cfg.strategies
        }
        self.done: dict[str, int] = {}
        try:
            total = _seconds_per_epoch(cfg) * sum(self.units.values())
            _note(f"estimated time on this machine: about {format_duration(total, 'left')}", args)
        except Exception as exc:  # an estimate must never stop the demo
            _note(f"(no time estimate: {exc})", args)

    def start(self, name: str) -> None:
        # strategies run one after the other: those started before are finished (early stopping
        # may have ended them before their last epoch; they count whole)
        for n in self.units:
            if n == name:
                break
            self.done[n] = self.units[n]
        self.done[name] = 0

    def epoch(self, name: str, row: dict) -> None:
        import time

        self.done[name] = min(int(row.get("epoch", 0)), self.units.get(name, self.epochs))
        done, total = sum(self.done.values()), sum(self.units.values())
        left = (time.perf_counter() - self.t0) / max(done, 1) * max(total - done, 0)
        _note(
            f"  {row.get('epoch')}/{self.epochs} epochs of {_label(name)} done; "
            f"about {format_duration(left, 'left')} left",
            self.args,
        )


def _label(name: str) -> str:
    from medtl.strategies import strategy_label

    return strategy_label(name).lower()


def _seconds_per_epoch(cfg: Any) -> float:
    """Seconds of one fine-tuning epoch of ``cfg`` on this machine, from timed training steps."""
    import time

    import torch

    from medtl.backbones import create_backbone

    n_images = 2 * int(cfg.data.synthetic_per_class) * (1 - cfg.data.test_fraction)
    size = int(cfg.model.image_size or 224)
    batch = int(cfg.train.batch_size)
    model, _ = create_backbone(cfg.model.backbone, num_classes=2, pretrained=False)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.arange(batch) % 2
    times = []
    for _ in range(3):  # the first step warms up allocators and kernels
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    # training steps plus the validation/test forward passes (about a third of a step per image)
    return min(times[1:]) * (n_images / batch) * 1.35


def _explicit(args: argparse.Namespace, ov: dict[str, Any]) -> set[str]:
    """Config fields the user set on purpose: options given, and every field of a --config file."""
    keys = set(ov)
    if args.config:
        import yaml

        from medtl.config import flatten_config

        loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        if isinstance(loaded, dict):
            keys |= set(flatten_config(loaded))
    return keys


def _run(args: argparse.Namespace, ov: dict[str, Any], *, first_only: bool) -> int:
    from medtl.config import load_config
    from medtl.experiment import compare as run_compare

    cfg = load_config(args.config, ov)
    if "output.out" not in ov and not args.config:
        cfg.output.out = f"runs/{cfg.name}"
    if first_only and len(cfg.strategies) > 1:
        cfg.strategies = cfg.strategies[:1]
    explicit = _explicit(args, ov) if args.resume else None
    summary = run_compare(cfg, progress=_progress(args), resume=args.resume, explicit=explicit)
    if args.json:
        _print_json(summary)
    else:
        _print_summary(summary, cfg.output.out)
    return _status_code(summary)


def _status_code(summary: dict[str, Any]) -> int:
    done = all(r.get("status") == "done" for r in summary["strategies"].values())
    return _exit.OK if done else _exit.ATTENTION


def compare(args: argparse.Namespace) -> int:
    return _run(args, _overrides(args), first_only=False)


def train(args: argparse.Namespace) -> int:
    ov = _overrides(args)
    if args.strategy:
        ov["strategies"] = [args.strategy]
    return _run(args, ov, first_only=not args.strategy)


def evaluate(args: argparse.Namespace) -> int:
    from medtl.evaluation import evaluate as run_evaluate

    if len(args.data_name) > len(args.data):
        from medtl.errors import ConfigError

        raise ConfigError(
            f"{len(args.data_name)} --data-name for {len(args.data)} --data: give one name per "
            "--data, in the same order."
        )
    names = args.data_name + [None] * (len(args.data) - len(args.data_name))
    table = run_evaluate(
        models=args.models,
        datasets=[{"path": d, "name": n} for d, n in zip(args.data, names)],
        batch_file=args.batch,
        out=args.out,
        split=args.split,
        threshold=args.threshold,
        prevalence=args.prevalence,
        progress=_progress(args),
        device=args.device,
        by=args.by,
    )
    if args.json:
        _print_json(table)
    else:
        print(table["markdown"])
        print(f"\ntable: {table['csv']}")
    return _exit.OK


def predict(args: argparse.Namespace) -> int:
    from medtl.evaluation import predict as run_predict

    res = run_predict(
        args.model,
        args.images,
        out=args.out,
        threshold=args.threshold,
        id_map=args.id_map,
        progress=_progress(args),
        device=args.device,
    )
    print(f"{res['n']} images predicted -> {res['out']}")
    if isinstance(res["threshold"], dict):  # several findings: one threshold each
        ts = ", ".join(f"{k} {v:.4g}" for k, v in res["threshold"].items())
        print(
            f"calls per finding: present when P >= its threshold ({ts}; {res['threshold_source']})"
        )
    elif res["threshold"] is not None:
        print(f"call: positive when P >= {res['threshold']:.4g} ({res['threshold_source']})")
    if args.id_map:
        print(f"id -> path map (contains identifiers): {args.id_map}")
    if res["skipped"]:
        print(f"{len(res['skipped'])} input(s) not used:", file=sys.stderr)
        _print_skipped(res["skipped"], has_map=bool(args.id_map))
    if res["unusable_named"]:
        print(
            f"medtl: error: {len(res['unusable_named'])} of the files you named could not be used "
            "(listed above).",
            file=sys.stderr,
        )
        return _exit.DATA_OR_CONFIG
    return _exit.OK


def adapt(args: argparse.Namespace) -> int:
    from medtl.adapt import adapt_model

    res = adapt_model(args.model, args.data, args.out, progress=_progress(args))
    print(f"BatchNorm statistics re-estimated on {res['n_images']} target images -> {res['out']}")
    if res["skipped"]:
        print(f"{len(res['skipped'])} input(s) not used:", file=sys.stderr)
        _print_skipped(res["skipped"], has_map=False)
    return 0


def advise(args: argparse.Namespace) -> int:
    from medtl.advisor import advise as run_advise

    kwargs: dict[str, Any] = {"progress": _progress(args)}
    if args.backbone:
        kwargs["backbone"] = args.backbone
    if args.image_size:
        kwargs["image_size"] = args.image_size
    if args.budget_minutes is not None:
        kwargs["budget_minutes"] = args.budget_minutes
    if getattr(args, "pilot_minutes", None) is not None:
        kwargs["pilot_minutes"] = args.pilot_minutes
    if args.patient_id_pattern:
        kwargs["patient_id_pattern"] = args.patient_id_pattern
    if args.seed is not None:
        kwargs["seed"] = args.seed
    if args.positive_class is not None:
        kwargs["positive_class"] = args.positive_class
    kwargs.update(_label_kwargs(args))  # --findings / --uncertain, as for compare
    advice = run_advise(args.data, **kwargs)
    if args.json:
        _print_json(advice.to_dict())
    else:
        print(advice.explain())
    return 0


def backbones(args: argparse.Namespace) -> int:
    from medtl.backbones import list_backbones

    rows = list_backbones()
    if args.json:
        _print_json(rows)
        return _exit.OK
    print(f"{'name':<28}{'features':>9}{'size':>6}  {'weights':<11}source")
    for r in rows:
        avail = "available" if r.get("weights_available") else "missing"
        if not r.get("weights_available"):
            r["weights_source"] = (
                f"needs {r.get('weights_file')} (--weights FILE or --allow-download)"
            )
        print(
            f"{r['name']:<28}{r.get('feature_dim', ''):>9}{r.get('input_size', ''):>6}  {avail:<11}"
            f"{r.get('weights_source', '')}"
        )
    return 0


def data_synth(args: argparse.Namespace) -> int:
    from medtl.data.synth import make_phantom

    extra: dict[str, Any] = {}
    if getattr(args, "findings", None):
        extra["findings"] = int(args.findings)
    if getattr(args, "prevalence", None):
        extra["prevalence"] = [float(v) for v in str(args.prevalence).split(",") if v.strip()]
    out = make_phantom(
        args.out,
        n_per_class=args.n_per_class,
        size=args.size,
        difficulty=args.difficulty,
        seed=args.seed,
        **extra,
    )
    n = sum(1 for _ in Path(out).rglob("*.dcm"))
    print(f"wrote {n} synthetic DICOM files to {out}")
    return 0


def data_card(args: argparse.Namespace) -> int:
    from medtl._fileio import atomic_write_text
    from medtl.data import load_dataset
    from medtl.data.card import data_card as make_card

    # the project's salt, as `data check` and `compare` use: one id per file in every output
    ds = load_dataset(
        args.path, progress=_progress(args), min_per_class=1, salt=_salt(),
        subgroups=getattr(args, "subgroups", None), **_label_kwargs(args),
    )  # fmt: skip
    text = make_card(ds)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"data card draft written to {args.out}")
    else:
        print(text)
    return 0


def data_check(args: argparse.Namespace) -> int:
    from medtl.data import load_dataset

    ds = load_dataset(
        args.path, progress=_progress(args), min_per_class=1, salt=_salt(), **_label_kwargs(args)
    )
    for split, counts in ds.counts().items():
        print(f"{split}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if ds.task_kind == "multilabel":
        _print_findings(ds)
    ignored = getattr(ds, "ignored", [])
    if ignored:
        print(f"{len(ignored)} hidden or documentation file(s) ignored")
    print(f"{len(ds.skipped)} file(s) cannot be used")
    if args.id_map:
        from medtl.data import write_id_map

        write_id_map(ds, args.id_map)
    _print_skipped(ds.skipped, has_map=bool(args.id_map), stream=sys.stdout)
    return _exit.ATTENTION if ds.skipped else _exit.OK


def _print_findings(ds: Any) -> None:
    """``data check`` on several findings per image: how the labels were read, positives per
    finding per split, and the findings too rare to score on test."""
    from medtl.data.card import multilabel_facts

    facts = multilabel_facts(ds) or {}
    lab = facts.get("labelling") or {}
    print(f"several findings per image ({len(ds.classes)}); positives per finding above")
    print(f"uncertain labels (-1): {lab.get('uncertain', 'ignore')}")
    if lab.get("ignored_columns"):
        print("columns ignored (not findings): " + ", ".join(lab["ignored_columns"]))
    for name, c in (lab.get("excluded") or {}).items():
        print(f"excluded {name}: {c['pos']} positive / {c['neg']} negative in training")
    rare = facts.get("too_rare_to_score") or {}
    if rare:
        print(
            f"too rare to score on test (< {facts.get('min_scorable')} positives or negatives): "
            + ", ".join(f"{n} ({c['pos']}/{c['neg']})" for n, c in rare.items())
        )


def _salt() -> bytes:
    from medtl.data import default_salt

    return default_salt()


def _print_skipped(skipped: list[Any], *, has_map: bool, stream: Any = None) -> None:
    """One line per unused file: its de-identified id and the reason (file names can identify
    patients; ``--id-map FILE`` maps ids back to paths)."""
    stream = stream or sys.stderr
    for s in skipped:
        print(f"  {s.uid or '(no id)'}: {s.reason}", file=stream)
    if skipped and not has_map:
        print("  (files are named by id; add --id-map FILE to map ids to paths)", file=stream)
