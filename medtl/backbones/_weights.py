"""Offline weight resolution: explicit file, weights package, torch hub cache; download only on request.

Weight files are loaded with ``torch.load(..., weights_only=True)`` (or safetensors), never by
unpickling arbitrary objects, and files with a known SHA-256 are verified *before* they are loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medtl.errors import ConfigError, MedtlError, WeightsNotFoundError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class WeightsIntegrityError(MedtlError):
    """A weights file's SHA-256 does not match the expected value (corrupt, truncated or different)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str, *, prefix_only: bool = False) -> str:
    """Return the file's SHA-256 after checking it against ``expected`` (full hex or a prefix).

    Raises:
        WeightsIntegrityError: on mismatch, naming the file, both hashes and the fix.
    """
    actual = sha256_file(path)
    ok = actual.startswith(expected.lower()) if prefix_only else actual == expected.lower()
    if not ok:
        raise WeightsIntegrityError(
            f"Weights file {str(path)!r} has SHA-256 {actual}, expected "
            f"{expected}{'...' if prefix_only else ''}. The file is corrupt, truncated or not the "
            "expected weights; delete it and reinstall/re-download it, or pass the right file."
        )
    return actual


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.pth``/``.pt``/``.bin`` (weights_only) or ``.safetensors``.

    A checkpoint that wraps its state dict under ``"state_dict"`` or ``"model"`` is unwrapped.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have many types; re-raise as one clear error
        raise ConfigError(
            f"Cannot load weights file {str(path)!r} as a tensor state dict "
            f"(torch.load weights_only=True): {exc}. Pass a .pth state dict or a .safetensors file."
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"Weights file {str(path)!r} does not hold a state dict of tensors "
            f"(got {type(obj).__name__}). Pass a file saved with torch.save(model.state_dict(), ...)."
        )
    return dict(obj)


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error that names the file and the keys."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong:
        raise ConfigError(
            f"Weights file {str(path)!r} does not fit this architecture: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} shape "
            f"mismatches {wrong[:3]}. Pass weights saved from the same architecture."
        )
    model.load_state_dict(dict(state), strict=True)


def package_file(module: str, relative: str) -> Path | None:
    """Path of a data file inside an installed package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def hub_checkpoint_path(file_name: str) -> Path:
    """Where torch (and torchvision) cache a downloaded checkpoint: ``torch.hub.get_dir()/checkpoints``.

    When torch is not imported yet, the same rule is applied here ($TORCH_HOME, else
    $XDG_CACHE_HOME/torch, else ~/.cache/torch; then /hub), so that listing backbones does not pay
    torch's import; once torch is loaded its own answer (which honours ``torch.hub.set_dir``) is used.
    """
    import os
    import sys

    if "torch" in sys.modules:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / file_name
    xdg = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(xdg, "torch")))
    return Path(home) / "hub" / "checkpoints" / file_name


def hash_prefix_of(file_name: str) -> str | None:
    """The SHA-256 prefix torchvision puts in its file names (``resnet18-f37072fd.pth`` -> ``f37072fd``)."""
    stem = Path(file_name).name.split(".")[0]
    tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail):
        return tail
    return None


def resolve_hub_weights(
    *, name: str, file_name: str, url: str, weights_path: str | None, allow_download: bool
) -> tuple[Path, str, str]:
    """Find torchvision-style weights offline; download only when ``allow_download``.

    Order: explicit ``weights_path``, then ``torch.hub.get_dir()/checkpoints/<file_name>``, then (opt-in)
    a download through torch.hub (hash-checked).

    Returns:
        (path, source, sha256) where source is ``"file:<path>"``, ``"torch_cache"`` or ``"download"``.

    Raises:
        WeightsNotFoundError: naming the file, the folder searched and three ways to obtain it.
    """
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights_path {str(path)!r} for backbone {name!r} does not exist. Pass an existing "
                f"file (expected contents: {file_name} from {url})."
            )
        return path, f"file:{path}", sha256_file(path)
    cached = hub_checkpoint_path(file_name)
    prefix = hash_prefix_of(file_name)
    if cached.is_file():
        sha = verify_sha256(cached, prefix, prefix_only=True) if prefix else sha256_file(cached)
        return cached, "torch_cache", sha
    if not allow_download:
        raise WeightsNotFoundError(
            f"ImageNet weights for backbone {name!r} are not available offline: expected file "
            f"{file_name!r} in folder {str(cached.parent)!r} (the torch hub cache). To get them: "
            f"download {url} into that folder, or pass --allow-download (allow_download=True), or "
            f"pass --weights FILE (weights_path=...) pointing at a copy of {file_name}."
        )
    import torch.hub

    log.info("Downloading %s to %s (allow_download=True)", url, cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(cached), hash_prefix=prefix, progress=True)
    return cached, "download", sha256_file(cached)
