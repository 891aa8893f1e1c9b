"""Publish a store: copy a complete, verified store so readers never see it half-written.

The copy is ordered for readers. The destination's root `zarr.json` is written first with
`complete: false` (anyone opening the store during the copy is refused as incomplete), then
every other object (chunks, shards, array metadata), then the object listing is compared with
the source's, and only then is the root rewritten with the source's attributes, `complete: true`
included. An interrupted publish therefore leaves an incomplete store, never a wrong one, and
rerunning it with `overwrite=True` replaces it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec

from satpipe.core.errors import SatpipeError
from satpipe.core.progress import progress
from satpipe.data.inventory import dataset_inventory, refuse_missing, saliency_inventory
from satpipe.data.outputs import prepare_output, refuse_chained, store_lock
from satpipe.data.storage import ATTR, is_url, local_path, open_group, read_attrs, storage_errors
from satpipe.data.zarr_internals import strip_protocol

ROOT_META = "zarr.json"
# Objects are moved in batches of about this many bytes: large enough for s3fs to run the
# requests of a batch concurrently, small enough to keep memory bounded.
BATCH_BYTES = 64 << 20


def _fs(uri: str, options: Mapping[str, Any] | None, write: bool = False):
    """(filesystem, root path) of a store; storage options only reach URL filesystems."""
    if is_url(uri):
        return fsspec.core.url_to_fs(str(uri), **dict(options or {}))
    # Local destinations need parent folders made on write (fsspec does not by default).
    kwargs = {"auto_mkdir": True} if write else {}
    return fsspec.core.url_to_fs(local_path(uri), **kwargs)


def _listing(fs, root: str) -> dict[str, int]:
    """{key relative to the store root: size in bytes} of every object of the store."""
    found = fs.find(root, detail=True)
    prefix = root.rstrip("/") + "/"
    return {
        path[len(prefix) :]: int(info.get("size") or 0)
        for path, info in found.items()
        if path.startswith(prefix) and info.get("type", "file") != "directory"
    }


def _batches(keys: list[str], sizes: Mapping[str, int]) -> Iterator[list[str]]:
    batch: list[str] = []
    total = 0
    for key in keys:
        batch.append(key)
        total += sizes[key]
        if total >= BATCH_BYTES:
            yield batch
            batch, total = [], 0
    if batch:
        yield batch


def _read(fs, paths: list[str]) -> list[bytes]:
    """Bytes of each path, in order; one concurrent batch on async filesystems (s3fs)."""
    found = fs.cat(paths, on_error="raise")
    if not isinstance(found, dict):  # a single path comes back bare
        return [found]
    # fsspec keys the answer by its own normalised path; match them back up by that.
    return [found[p] if p in found else found[strip_protocol(fs, p)] for p in paths]


def _verify(src: str, options: Mapping[str, Any] | None) -> None:
    """Refuse a source that fails `store verify` (every chunk read, checksums, shards done)."""
    from satpipe.data.inspect import verify_store

    problems = verify_store(src, data=None, storage_options=options)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SatpipeError(f"{src}: refusing to publish, verify failed: {problems[0]}{more}")


def _root_bytes(meta: dict[str, Any], complete: bool) -> bytes:
    meta = json.loads(json.dumps(meta))  # deep copy
    meta.setdefault("attributes", {}).setdefault(ATTR, {})["complete"] = complete
    return json.dumps(meta, indent=2).encode()


def publish_store(
    src: str,
    dst: str,
    src_options: Mapping[str, Any] | None = None,
    dst_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Copy the complete store `src` to `dst` (paths or fsspec URLs such as `s3://b/x.zarr`).

    `src` must be a complete satpipe store (dataset or saliency) that passes `store verify`;
    `dst` must not exist unless `overwrite`. Object bytes are copied unchanged, so the copy
    reads back identically (checksums included). Returns `dst`.
    """
    src, dst = str(src), str(dst)
    refuse_chained(dst, "DST")
    with storage_errors(src):
        group = open_group(src, "r", src_options)
        attrs = read_attrs(group, src)
    if not attrs.get("complete"):
        raise SatpipeError(f"{src}: store is incomplete; only complete stores can be published")
    # The inventory first (one listing per array): a store that lacks shards is refused
    # before verify reads every chunk.
    inventory = dataset_inventory if attrs.get("kind") == "dataset" else saliency_inventory
    refuse_missing(src, inventory(group, attrs, src))
    src_fs, src_root = _fs(src, src_options)
    dst_fs, dst_root = _fs(dst, dst_options, write=True)
    if type(src_fs) is type(dst_fs) and src_root.rstrip("/") == dst_root.rstrip("/"):
        raise SatpipeError(f"{dst}: source and destination are the same store")
    _verify(src, src_options)

    with storage_errors(src):
        sizes = _listing(src_fs, src_root)
        root_raw = src_fs.cat_file(f"{src_root}/{ROOT_META}")
        root_meta = json.loads(root_raw)
    if ROOT_META not in sizes:
        raise SatpipeError(f"{src}: no root {ROOT_META}; not a zarr v3 store")

    with store_lock(dst, f"{attrs.get('kind')} store"):
        return _copy(src, dst, src_fs, src_root, dst_fs, dst_root, dst_options, attrs,
                     sizes, root_raw, root_meta, overwrite)  # fmt: skip


def _copy(src, dst, src_fs, src_root, dst_fs, dst_root, dst_options, attrs, sizes, root_raw,
          root_meta, overwrite) -> str:  # fmt: skip
    """The copy itself, under the destination's lock."""
    with storage_errors(dst):
        # Only a store of the source's kind is replaced (root metadata first, so no reader
        # sees the old store with new chunks); never the source, a link or a chained URL.
        prepare_output(dst, attrs.get("kind"), overwrite, (src,), dst_options, flag="DST")
        dst_fs.pipe_file(f"{dst_root}/{ROOT_META}", _root_bytes(root_meta, complete=False))

        # Chunks before array metadata: an array appears only once its chunks are there.
        # `.partial` files are zarr's temporaries that a killed writer left; never data.
        keys = [k for k in sizes if k != ROOT_META and not k.endswith(".partial")]
        keys.sort(key=lambda k: (k.endswith(ROOT_META), k))
        with progress(f"publish {dst}", sum(sizes[k] for k in keys)) as advance:
            for batch in _batches(keys, sizes):
                with storage_errors(src):
                    data = _read(src_fs, [f"{src_root}/{k}" for k in batch])
                dst_fs.pipe({f"{dst_root}/{k}": blob for k, blob in zip(batch, data, strict=True)})
                advance(sum(sizes[k] for k in batch))

        copied = _listing(dst_fs, dst_root)
        missing = [k for k in keys if copied.get(k) != sizes[k]]
        if missing:
            raise SatpipeError(
                f"{dst}: copy is short ({len(missing)} objects differ, e.g. {missing[0]}); "
                "left marked incomplete"
            )
        # Last: the source's own root metadata, which says complete (checked above).
        dst_fs.pipe_file(f"{dst_root}/{ROOT_META}", root_raw)
    return dst
