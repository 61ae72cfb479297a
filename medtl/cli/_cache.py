"""``medtl cache info | verify | clear``: what the caches hold, whether they are sound, clearing them.

For a user who suspects a stale result: ``info`` shows each cache's entries, size and key version,
``verify`` re-reads every entry (and with ``--data`` re-decodes that dataset's files and compares them
with their cached pixels), ``clear`` removes all of it, the stale part, one backbone's embeddings or
one dataset's images and embeddings. The logic lives in :mod:`medtl.cache`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from medtl.cli import _exit


def add_cache_parser(subs: Any, sub: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``medtl cache`` and its subcommands to ``subs`` (``sub``: _main's parser factory)."""
    p = sub(
        subs,
        "cache",
        "Show, verify or clear the decoded-image, embedding and result caches.",
        "  medtl cache info\n  medtl cache verify --data ./xrays --image-size 224\n"
        "  medtl cache clear --stale\n  medtl cache clear --backbone efficientnet_lite0.in1k\n"
        "  medtl cache clear --dataset ./xrays\n  medtl cache clear --all",
        cache_help,
    )
    csubs = p.add_subparsers(dest="cache_command", metavar="<cache command>")
    q = sub(csubs, "info", "What the caches hold: entries, size, key versions.",
            "  medtl cache info\n  medtl cache info --cache-dir runs/.medtl_cache --json",
            cache_info)  # fmt: skip
    _common(q)
    q = sub(
        csubs,
        "verify",
        "Re-read every cache entry; with --data, re-decode those files and compare with the cache.",
        "  medtl cache verify\n  medtl cache verify --data ./xrays --image-size 224 --fix",
        cache_verify,
    )
    _common(q)
    q.add_argument(
        "--data", help="dataset folder, manifest or files whose cached images to re-check"
    )
    q.add_argument("--image-size", type=int, help="the size those images were cached at")
    q.add_argument(
        "--window",
        default="header",
        choices=["header", "full", "percentile"],
        help="the DICOM windowing they were read with",
    )
    q.add_argument(
        "--fix", action="store_true", help="remove the bad entries (recomputed next run)"
    )
    q = sub(
        csubs,
        "clear",
        "Remove cache entries: all, the stale ones, one backbone's or one dataset's.",
        "  medtl cache clear --stale\n  medtl cache clear --dataset ./xrays\n  medtl cache clear --all",
        cache_clear,
    )
    _common(q)
    q.add_argument("--all", action="store_true", help="every image, embedding and result entry")
    q.add_argument("--stale", action="store_true", help="entries no current key can reach")
    q.add_argument("--backbone", help="every embedding of this backbone (see `medtl backbones`)")
    q.add_argument(
        "--dataset", help="dataset folder, manifest or files: their images and embeddings"
    )
    q.add_argument("--results", action="store_true", help="the memoised splits and heads")


def _common(p: argparse.ArgumentParser) -> None:
    from medtl.cachekeys import DEFAULT_CACHE_DIR  # light: the parser is built at every start

    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="the project's cache folder")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cache_help(args: argparse.Namespace) -> int:
    print("usage: medtl cache {info,verify,clear} ... (see medtl cache --help)")
    return _exit.OK


def cache_info(args: argparse.Namespace) -> int:
    from medtl.cache import cache_inventory
    from medtl.cli._commands import _print_json

    inv = cache_inventory(args.cache_dir)
    if args.json:
        _print_json(inv)
        return _exit.OK
    v = inv["versions"]
    print(f"cache folder: {inv['cache_dir']}")
    print(f"key versions: images {v['images']}, embeddings {v['embeddings']}, "
          f"results {v['results']}")  # fmt: skip
    cur, st = inv["images"]["current"], inv["images"]["stale"]
    print(f"\ndecoded images: {cur['entries']} entries, {_mb(cur['bytes'])} "
          f"(stale: {st['entries']}, {_mb(st['bytes'])})")  # fmt: skip
    print(f"\n{'embeddings':<12}{'backbone':<28}{'size':>6}{'ch':>4}{'precision':>10}"
          f"{'rows':>8}{'MB':>8}  device / state")  # fmt: skip
    for f in inv["embeddings"]:
        state = "current" if f["current"] else f"stale ({f['version'] or 'no key'})"
        print(
            f"{f['folder'][:10]:<12}{f['backbone_name'] or '?'!s:<28}"
            f"{f['image_size'] or '?'!s:>6}{f['channels'] or '?'!s:>4}"
            f"{f['precision'] or '?'!s:>10}{f['rows']:>8}{f['bytes'] / 1e6:>8.1f}  "
            f"{f['device'] or '?'} / {state}"
        )
    r = inv["results"]
    print(f"\nmemoised results: {r['files']} files, {_mb(r['bytes'])}")
    return _exit.OK


def cache_verify(args: argparse.Namespace) -> int:
    from medtl.cache import verify_cache
    from medtl.cli._commands import _print_json

    out = verify_cache(
        args.cache_dir,
        fix=args.fix,
        data=args.data,
        image_size=args.image_size,
        read_options={"window": args.window},
    )
    if args.json:
        _print_json(out)
    else:
        c = out["checked"]
        print(f"checked {c['images']} image entries, {c['embeddings']} embedding chunks, "
              f"{c['results']} results; re-decoded {c['recomputed']} file(s)")  # fmt: skip
        for p in out["problems"]:
            print(f"  {p['cache']}: {p['entry']}: {p['reason']}")
        if out["problems"]:
            print(("removed" if args.fix else "found") + f" {len(out['problems'])} bad entr"
                  + ("y" if len(out["problems"]) == 1 else "ies")
                  + ("" if args.fix else "; --fix removes them"))  # fmt: skip
        else:
            print("no problem found")
    return _exit.OK if not out["problems"] or args.fix else _exit.ATTENTION


def cache_clear(args: argparse.Namespace) -> int:
    from medtl.cache import clear_cache
    from medtl.cli._commands import _print_json
    from medtl.errors import ConfigError

    if not (args.all or args.stale or args.backbone or args.dataset or args.results):
        raise ConfigError(
            "medtl cache clear needs what to clear: --all, --stale, --backbone NAME, "
            "--dataset PATH or --results."
        )
    out = clear_cache(args.cache_dir, everything=args.all, stale=args.stale,
                      backbone=args.backbone, dataset=args.dataset, results=args.results)  # fmt: skip
    if args.json:
        _print_json(out)
        return _exit.OK
    for cache, r in out["removed"].items():
        unit = "embeddings or files" if cache == "embeddings" else "files"
        print(f"{cache}: removed {r['files']} {unit}, {_mb(r['bytes'])}")
    return _exit.OK
