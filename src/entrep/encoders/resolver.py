"""One weights resolver: a source string becomes local files, or one clear WeightsError.

Source forms (open_clip's naming scheme):

- ``hf-hub:org/repo``      Hugging Face Hub (used from the local HF cache when there;
                           downloaded only when the hub is reachable)
- ``local-dir:/path`` or a plain folder path
- a local file             ``.pt`` ``.pth`` ``.bin`` ``.safetensors`` ``.ckpt``
- ``package:KEY``          weights shipped inside an installed Python package
                           (the offline defaults, e.g. ``package:efficientnet-lite0``)
- anything else            a pretrained *tag* (open_clip: ``openai``, ``laion2b_s34b_b88k``)

Precedence for an encoder: the explicit ``weights`` argument, then the
environment variable ``ENTREP_WEIGHTS_<NAME>`` (e.g. ``ENTREP_WEIGHTS_BIOMEDCLIP``),
then the encoder's default. A failing hub never produces a pile of retries and
tracebacks: it is asked once (:func:`probe_hub`, ``ENTREP_HUB_TIMEOUT`` seconds,
default 10, through the environment's proxies) and the user gets one line
naming the cause (network, auth, missing file, hub error) and how to point at
local weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

from entrep.errors import WeightsError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
HUB_PREFIX = "hf-hub:"
DIR_PREFIX = "local-dir:"
PACKAGE_PREFIX = "package:"
DOCS_HINT = "see docs/encoders.md, 'Air-gapped machines'"


@dataclass(frozen=True)
class WeightsSource:
    """A parsed weights source. ``kind``: hf-hub, local-dir, file, package or tag."""

    kind: str
    location: str

    def __str__(self) -> str:
        if self.kind == "hf-hub":
            return HUB_PREFIX + self.location
        if self.kind == "local-dir":
            return DIR_PREFIX + self.location
        if self.kind == "package":
            return PACKAGE_PREFIX + self.location
        return self.location


def parse_source(spec: str | Path) -> WeightsSource:
    """Parse a weights source string (see module docstring). Paths become absolute."""
    s = str(spec).strip()
    if not s:
        raise WeightsError("empty weights source; give hf-hub:org/repo, local-dir:/path, a weights file or package:KEY")
    if s.startswith(HUB_PREFIX):
        repo = s[len(HUB_PREFIX):].strip().strip("/")
        if repo.count("/") != 1:
            raise WeightsError(f"weights source {s!r}: expected hf-hub:org/repo")
        return WeightsSource("hf-hub", repo)
    if s.startswith(DIR_PREFIX):
        p = Path(s[len(DIR_PREFIX):]).expanduser()
        return WeightsSource("local-dir", str(p.resolve()))
    if s.startswith(PACKAGE_PREFIX):
        return WeightsSource("package", s[len(PACKAGE_PREFIX):])
    p = Path(s).expanduser()
    if p.is_dir():
        return WeightsSource("local-dir", str(p.resolve()))
    if p.is_file() or p.suffix.lower() in WEIGHT_SUFFIXES or "/" in s or s.startswith("."):
        return WeightsSource("file", str(p.resolve()))
    return WeightsSource("tag", s)


def env_var_for(encoder_name: str) -> str:
    """Environment variable that overrides an encoder's weights, e.g. ENTREP_WEIGHTS_DINOV2_VITB14."""
    return "ENTREP_WEIGHTS_" + re.sub(r"[^A-Z0-9]+", "_", encoder_name.upper()).strip("_")


def choose_source(encoder_name: str, weights: str | Path | None, default: str) -> WeightsSource:
    """Explicit ``weights``, else ``$ENTREP_WEIGHTS_<NAME>``, else ``default``."""
    if weights is not None and str(weights).strip():
        return parse_source(weights)
    env = os.environ.get(env_var_for(encoder_name), "").strip()
    if env:
        log.info("weights for %s from $%s=%s", encoder_name, env_var_for(encoder_name), env)
        return parse_source(env)
    return parse_source(default)


def how_to_point(encoder_name: str, example: str) -> str:
    """The standard hint telling a user how to use local weights for an encoder."""
    return (
        f"point at local weights: set {env_var_for(encoder_name)}={example}, or put 'weights: {example}' for this "
        f"encoder in a profile file (--profile FILE), or pass weights=\"{example}\" in Python ({DOCS_HINT})"
    )


# ---- package-provided defaults ------------------------------------------
_PACKAGE_WEIGHTS: dict[str, Callable[[], Path]] = {}


def register_package_weights(key: str) -> Callable:
    """Decorator: ``fn() -> Path`` locating weights shipped by an installed package."""

    def deco(fn: Callable[[], Path]) -> Callable[[], Path]:
        _PACKAGE_WEIGHTS[key] = fn
        return fn

    return deco


def resolve_package(key: str) -> Path:
    """Path of package-provided weights; WeightsError naming the pip package when absent."""
    if key not in _PACKAGE_WEIGHTS:
        raise WeightsError(f"unknown package weights {key!r}; known: {', '.join(sorted(_PACKAGE_WEIGHTS))}")
    try:
        path = Path(_PACKAGE_WEIGHTS[key]())
    except ImportError as e:
        raise WeightsError(f"package weights {key!r} need a Python package that is not installed ({e}); "
                           f"reinstall entrep with its dependencies") from None
    if not path.exists():
        raise WeightsError(f"package weights {key!r}: {path} is missing; reinstall the package that provides it")
    return path


def require_dir(source: WeightsSource, needed: Iterable[str], *, what: str) -> Path:
    """A local folder that must hold ``needed`` files; WeightsError naming what is missing."""
    d = Path(source.location)
    if not d.is_dir():
        raise WeightsError(f"{what}: weights folder {d} not found")
    missing = [n for n in needed if not (d / n).is_file()]
    if missing:
        raise WeightsError(f"{what}: folder {d} lacks {', '.join(missing)}")
    return d


def require_file(source: WeightsSource, *, what: str) -> Path:
    p = Path(source.location)
    if not p.is_file():
        raise WeightsError(f"{what}: weights file {p} not found")
    if p.stat().st_size == 0:
        raise WeightsError(f"{what}: weights file {p} is empty")
    return p


def find_weights_file(folder: Path, preferred: Iterable[str], *, what: str) -> Path:
    """The weights file in ``folder``: the first of ``preferred`` present, else the only one there."""
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    if len(found) == 1:
        return found[0]
    if not found:
        raise WeightsError(f"{what}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) in {folder}")
    raise WeightsError(f"{what}: several weights files in {folder} ({', '.join(p.name for p in found)}); "
                       f"name the one to use as the weights source")


# ---- Hugging Face Hub ---------------------------------------------------
def offline_mode() -> bool:
    """True when the user asked for no network (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, ENTREP_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ENTREP_OFFLINE"))


def hub_timeout() -> float:
    """Seconds the hub probe may take (``ENTREP_HUB_TIMEOUT``, default 10)."""
    try:
        return max(0.5, float(os.environ.get("ENTREP_HUB_TIMEOUT", "10")))
    except ValueError:
        return 10.0


def probe_hub(repo: str, timeout: float | None = None) -> tuple[bool, str]:
    """Ask the hub about ``repo`` once, within ``timeout`` seconds. Returns (ok, cause).

    One HTTP request to ``$HF_ENDPOINT/api/models/REPO`` through the proxies of
    the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``), so every
    failure is known before any download starts, and named: network (no route,
    DNS, refused, no answer in time), auth (401/403), missing repository (404)
    or a hub error (5xx). The causes are short phrases for one error line.
    """
    import urllib.error
    import urllib.request

    timeout = hub_timeout() if timeout is None else timeout
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/models/{repo}"
    headers = {"User-Agent": "entrep"}
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    host = urlparse(endpoint).hostname or endpoint
    via = " through the proxy" if urllib.request.getproxies() and not urllib.request.proxy_bypass(host) else ""
    try:
        # a fresh opener reads the proxy variables now (urlopen's global one keeps those of its first use)
        with urllib.request.build_opener().open(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            r.read(1)
        return True, ""
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return False, (f"auth: the hub refused access to {repo} (HTTP {e.code}); log in "
                           "(huggingface-cli login) or set HF_TOKEN")
        if e.code == 404:
            return False, f"missing file: the hub has no repository {repo} (HTTP 404)"
        return False, f"hub error: {host}{via} answered HTTP {e.code}"
    except (TimeoutError, socket.timeout):
        return False, f"network: {host}{via} did not answer within {timeout:g} s"
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return False, f"network: {host}{via} did not answer within {timeout:g} s"
        return False, f"network: cannot reach {host}{via} ({getattr(reason, 'strerror', None) or reason})"
    except (OSError, ValueError) as e:
        return False, f"network: cannot reach {host}{via} ({getattr(e, 'strerror', None) or e})"


def hub_files(
    repo: str,
    required: Iterable[str],
    *,
    optional: Iterable[str] = (),
    any_of: Iterable[str] = (),
    encoder_name: str,
    example: str,
) -> dict[str, Path]:
    """Local paths of files from a hub repo: the HF cache first, then a download.

    ``required`` must all exist; of ``any_of`` the first available is taken
    (returned under key ``"*"``); ``optional`` are fetched when present. Offline
    or unreachable: one WeightsError with :func:`how_to_point`.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    required, optional, any_of = list(required), list(optional), list(any_of)
    out: dict[str, Path] = {}

    def cached(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo, name, local_files_only=True))
        except (LocalEntryNotFoundError, EntryNotFoundError, OSError, ValueError):
            return None

    for name in required + optional:
        p = cached(name)
        if p is not None:
            out[name] = p
    for name in any_of:
        p = cached(name)
        if p is not None:
            out["*"] = p
            break
    complete = all(n in out for n in required) and (not any_of or "*" in out)
    if complete:
        return out

    missing = [n for n in required if n not in out] + ([f"one of {any_of}"] if any_of and "*" not in out else [])
    where = f"hf-hub:{repo}"
    if offline_mode():
        raise WeightsError(f"{encoder_name}: {where} is not in the local Hugging Face cache and offline mode is on "
                           f"(missing {', '.join(missing)}); {how_to_point(encoder_name, example)}")
    ok, reason = probe_hub(repo)
    if not ok:
        raise WeightsError(f"{encoder_name}: cannot download {where}: {reason}; {how_to_point(encoder_name, example)}")

    def fetch(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo, name, etag_timeout=hub_timeout()))
        except EntryNotFoundError:
            return None
        except Exception as e:  # network/auth errors from huggingface_hub: one line, with the fix
            raise WeightsError(f"{encoder_name}: download of {name} from {where} failed "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                               f"{how_to_point(encoder_name, example)}") from None

    for name in required:
        if name not in out:
            p = fetch(name)
            if p is None:
                raise WeightsError(f"{encoder_name}: {where} has no file {name}")
            out[name] = p
    for name in optional:
        if name not in out:
            p = fetch(name)
            if p is not None:
                out[name] = p
    if any_of and "*" not in out:
        for name in any_of:
            p = fetch(name)
            if p is not None:
                out["*"] = p
                break
        else:
            raise WeightsError(f"{encoder_name}: {where} has none of {', '.join(any_of)}")
    return out


# ---- weights digests (for fingerprints) ---------------------------------
def digest_cache_root() -> Path:
    """Folder of the content-hash memo used for weights digests: $ENTREP_DIGEST_CACHE, else the one
    memo of :mod:`entrep.data.hashing` (``$ENTREP_CACHE`` or ``~/.cache/entrep``)."""
    from entrep.data.hashing import default_hash_root

    env = os.environ.get("ENTREP_DIGEST_CACHE", "").strip()
    return Path(env).expanduser() if env else default_hash_root()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) by the one content-hash memo."""
    from entrep.data.hashing import HashCache

    return HashCache(root=digest_cache_root()).sha256_one(path)


def weights_digest(paths: Iterable[str | Path]) -> str:
    """One digest over several files (name + content digest each, in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode())
        h.update(file_digest(p).encode())
    return h.hexdigest()


# ---- reading checkpoint files -------------------------------------------
def _numpy_globals() -> list:
    """numpy scalar/dtype types that training checkpoints carry in their metadata (safe to unpickle)."""
    import importlib

    import numpy as np

    out: list = [np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(Exception):
            out.append(importlib.import_module(mod).scalar)
    for t in ("float16", "float32", "float64", "int32", "int64", "bool"):
        out.append(type(np.dtype(t)))
    return out


def load_checkpoint_file(path: str | Path, *, what: str) -> dict:
    """Read a .safetensors or torch checkpoint (weights only, on CPU); WeightsError on failure."""
    import torch

    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{what}: cannot read checkpoint {path} ({msg[:300]})") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{what}: checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def compare_state_dicts(expected: dict, found: dict, *, ignore_missing: Iterable[str] = ()) -> tuple[list, list, list]:
    """Keys a checkpoint lacks, keys it has in excess, and shape mismatches, for strict loading reports."""
    skip = set(ignore_missing)
    missing = [k for k in expected if k not in found and k not in skip]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in found and tuple(found[k].shape) != tuple(v.shape)]
    return missing, unexpected, wrong

