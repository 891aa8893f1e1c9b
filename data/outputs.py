"""Outputs satpipe may write, replace or lock: the one check every command that overwrites runs.

`--overwrite` removes a path only when it holds what satpipe made, of the kind the command
writes: a dataset store for `data make` / `data import`, a saliency store for `saliency`, any
satpipe store for `store publish`, a run directory for `train`. It never removes

- the input of the same command (or a path holding it, or one inside it);
- anything through `::` (fsspec reads `a::b` as the chained URL "b, through a", so `victim::x`
  would address the unrelated `victim`): an output path with `::` is refused outright;
- a symbolic link or what it points to;
- a file, a directory of someone else's files, or a store of another kind.

Each refusal is one line naming the path and what it holds. The lock of a local store lives
beside it (`NAME.zarr.lock`, see satpipe.core.locks), so it exists before the store does and
survives the store's replacement; URL stores (s3://...) are not locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from satpipe.core.errors import SatpipeError
from satpipe.core.locks import WriterLock

ATTR = "satpipe"
STORE_KINDS = ("dataset", "saliency")
# Files a run directory may hold before its config.json is written (a lock, its temporaries).
RUN_LOCK_FILES = ("train.lock",)
# How many entries are listed to describe (or vet) a directory; more are not read.
LIST_LIMIT = 10_000
# What a zarr.json describing an output's kind may weigh; a larger one is not trusted.
META_LIMIT = 64 << 20


def _local(uri: str) -> str:
    uri = str(uri)
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _is_url(uri: str) -> bool:
    return "://" in _local(uri)


def refuse_chained(uri: str, flag: str = "--out") -> None:
    """Refuse an output path with `::`: fsspec would read it as a chain of URLs, so writing
    (or deleting) `victim::new.zarr` touches `victim`. satpipe writes through no chain."""
    if "::" in str(uri):
        raise SatpipeError(
            f"{uri}: {flag} contains '::', which fsspec reads as a chained URL (it would "
            "address another path); satpipe writes to plain paths and URLs only"
        )


def _resolved(uri: str) -> str:
    """A comparable form of a path or URL: local paths absolute with links resolved."""
    uri = str(uri)
    if _is_url(uri):
        return uri.rstrip("/")
    return os.path.realpath(os.path.abspath(_local(uri)))


def _holds(out: str, other: str) -> bool:
    """True when removing `out` would remove `other` (the same path, or one inside it)."""
    a, b = _resolved(out), _resolved(other)
    return a == b or b.startswith(a.rstrip("/") + "/")


def refuse_inputs(out: str, inputs: Iterable[str | None], flag: str = "--out") -> None:
    """Refuse an output that is, or holds, one of this command's inputs (an output inside an
    input folder, an import's store beside its source files say, is fine)."""
    for given in inputs:
        if given and _holds(str(out), str(given)):
            same = _resolved(str(out)) == _resolved(str(given))
            how = "is" if same else "holds"
            raise SatpipeError(
                f"{out}: {flag} {how} an input of this command ({given}); writing there would "
                "destroy the input: choose another output"
            )


def _fs(uri: str, storage_options: Mapping[str, Any] | None):
    import fsspec

    if _is_url(uri):
        return fsspec.core.url_to_fs(str(uri), **dict(storage_options or {}))
    return fsspec.core.url_to_fs(_local(uri))


def _store_kind(fs, root: str) -> tuple[str | None, str]:
    """(satpipe kind or None, what the path holds, in words) of an existing path."""
    root = root.rstrip("/")
    meta = f"{root}/zarr.json"
    if fs.exists(meta):
        with contextlib.suppress(OSError, ValueError, SatpipeError):
            if fs.size(meta) <= META_LIMIT:
                from satpipe.data.metadata import bounded_json

                node = bounded_json(fs.cat_file(meta), meta)
                attrs = (node.get("attributes") or {}).get(ATTR) if isinstance(node, dict) else None
                if isinstance(attrs, dict) and attrs.get("kind"):
                    return str(attrs["kind"]), f"a satpipe {attrs['kind']} store"
                if isinstance(node, dict) and node.get("node_type") == "group":
                    return None, "a zarr group that is not a satpipe store"
    return None, _describe(fs, root)


def _files(fs, root: str):
    """Relative names of the files under `root`, lazily on local disk (a home directory given
    by mistake is not listed whole)."""
    if "file" in getattr(fs, "protocol", ()) or "local" in getattr(fs, "protocol", ()):
        for top, _dirs, files in os.walk(root):
            for name in files:
                yield os.path.relpath(os.path.join(top, name), root)
        return
    for entry in fs.find(root, withdirs=False):
        yield entry[len(root) + 1 :]


def _describe(fs, root: str) -> str:
    if not fs.isdir(root):
        return "a file"
    names = []
    for i, name in enumerate(_files(fs, root)):
        if i >= LIST_LIMIT:
            break
        names.append(name)
    if not names:
        return "an empty directory"
    shown = ", ".join(sorted(names)[:3])
    count = f"{len(names)}{'+' if len(names) >= LIST_LIMIT else ''}"
    more = "" if len(names) <= 3 else f", ... ({count} files)"
    return f"files that satpipe did not write ({shown}{more})"


def _only_zarr_metadata(fs, root: str) -> bool:
    """True for a zarr group whose creator died before writing its satpipe attributes: every
    file is a zarr.json (arrays are created before the attributes, chunks after)."""
    for i, name in enumerate(_files(fs, root.rstrip("/"))):
        if i >= LIST_LIMIT or not name.endswith("zarr.json"):
            return False
    return True


def prepare_output(
    uri: str,
    kind: str | None,
    overwrite: bool,
    inputs: Iterable[str | None] = (),
    storage_options: Mapping[str, Any] | None = None,
    flag: str = "--out",
    remove: bool = True,
) -> bool:
    """Check that the store `uri` may be written; with `overwrite`, remove what is there.

    kind: "dataset", "saliency", or None (any satpipe store). Returns True when something was
    (or, with remove=False, would be) removed. Refused (one line, nothing removed): an output
    with `::`, one that is an input, an existing output without `overwrite`, and with it
    anything satpipe did not make as that kind (see the module docstring). remove=False only
    checks: a command refuses before its work, not after it.
    """
    refuse_chained(uri, flag)
    refuse_inputs(uri, inputs, flag)
    local = not _is_url(uri)
    if local and os.path.islink(_local(uri)):
        target = os.readlink(_local(uri))
        raise SatpipeError(
            f"{uri}: is a symbolic link (to {target}); satpipe neither writes through nor "
            "removes links: give the real path, or remove the link yourself"
        )
    fs, root = _fs(uri, storage_options)
    if not fs.exists(root):
        return False
    if not overwrite:
        raise SatpipeError(f"{uri}: output exists (pass --overwrite to replace it)")
    found, what = _store_kind(fs, root)
    wanted = f"a satpipe {kind} store" if kind else "a satpipe store"
    if found is None and what == "an empty directory":
        if remove:
            fs.rm(root, recursive=True)
        return True
    if found is None and what.startswith("a zarr group") and _only_zarr_metadata(fs, root):
        what = "an unfinished satpipe store"  # its writer died before the attributes
    elif found is None or (kind and found != kind) or found not in STORE_KINDS:
        raise SatpipeError(
            f"{uri}: holds {what}, not {wanted}; --overwrite replaces only {wanted} "
            "(move or delete it yourself, or choose another output)"
        )
    if not remove:
        return True
    # The root metadata first: a reader never sees the old store half removed as valid.
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(f"{root.rstrip('/')}/zarr.json")
    fs.rm(root, recursive=True)
    return True


def lock_path(uri: str) -> Path | None:
    """Where the lock of the store `uri` lives (`NAME.zarr.lock` beside it); None for URLs."""
    if _is_url(uri):
        return None
    path = Path(os.path.abspath(_local(uri)))
    return path.parent / f"{path.name}.lock"


def store_lock(uri: str, what: str = "store"):
    """The writer lock of the store `uri` (a context manager; a no-op for URL stores)."""
    refuse_chained(uri)
    path = lock_path(uri)
    if path is None:
        return contextlib.nullcontext()
    return WriterLock(path, uri, what)


def is_run_dir(path: str | os.PathLike) -> bool:
    """True when the directory `path` holds a satpipe run: its config.json is a run config
    (or it holds nothing but a run lock, the trace of a run refused before it wrote)."""
    path = Path(path)
    config = path / "config.json"
    if config.is_file():
        with contextlib.suppress(OSError, ValueError, SatpipeError):
            if config.stat().st_size <= META_LIMIT:
                from satpipe.data.metadata import bounded_json

                found = bounded_json(config.read_bytes(), str(config))
                return isinstance(found, dict) and {"variant", "data", "out"} <= set(found)
        return False
    names = [p.name for p in path.iterdir()]
    return all(n in RUN_LOCK_FILES or n.startswith(".train.lock.") for n in names)


def check_run_output(out: str, inputs: Iterable[str | None] = ()) -> None:
    """Refuse a run directory `out` that is an input, a link's way into something else, a
    file, or a non-empty directory that is not a satpipe run (nothing there is touched)."""
    refuse_chained(out)
    refuse_inputs(out, inputs)
    path = Path(_local(out))
    if _is_url(out):
        raise SatpipeError(f"{out}: --out of a run must be a local directory")
    if path.exists() and not path.is_dir():
        raise SatpipeError(f"{out}: --out is a file, not a run directory")
    if path.is_dir() and any(True for _ in path.iterdir()) and not is_run_dir(path):
        fs, root = _fs(str(path), None)
        raise SatpipeError(
            f"{out}: holds {_describe(fs, root)} and is not a satpipe run; a run needs an "
            "empty or new directory (or an earlier run's, with --resume or --overwrite)"
        )


def prepare_file_output(path: str | os.PathLike, overwrite: bool, is_ours, what: str,
                        inputs: Iterable[str | None] = ()) -> None:  # fmt: skip
    """Check that the single file `path` may be written (a checkpoint, say): refused when it
    is an input, a link, a directory, or exists without `overwrite`; with it, when
    `is_ours(path)` is False (then it holds something satpipe did not write as `what`). The
    file is replaced by its writer, atomically; nothing is removed here."""
    out = str(path)
    refuse_chained(out)
    refuse_inputs(out, inputs)
    if os.path.islink(out):
        raise SatpipeError(
            f"{out}: is a symbolic link (to {os.readlink(out)}); satpipe neither writes through "
            "nor removes links"
        )
    if not os.path.lexists(out):
        return
    if os.path.isdir(out):
        raise SatpipeError(f"{out}: is a directory, not {what}")
    if not overwrite:
        raise SatpipeError(f"{out}: output exists (pass --overwrite to replace it)")
    if not is_ours(out):
        raise SatpipeError(
            f"{out}: is not {what}; --overwrite replaces only {what} (move or delete it "
            "yourself, or choose another output)"
        )
