"""The one place satpipe relies on zarr and fsspec beyond their public, synchronous API
(written against zarr 3.1 and fsspec 2025-2026). Each function names what it relies on and
why the public API does not do the job; if an upgrade breaks one, this is the module to fix
(tests/test_integrity.py, test_partial_copies.py and test_s3.py run every function here on
local disk and on an S3 server).

zarr 3 stores are asynchronous: `Store.list_prefix`, `get`, `getsize` and `delete` are public
coroutines, but zarr offers no public way to run one from synchronous code. `run` uses the
function zarr's own synchronous `Array` and `Group` use, so a coroutine runs on zarr's event
loop, the loop an fsspec store's sessions (s3fs, aiohttp) are bound to; `asyncio.run` would
start another loop and break them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import zarr
import zarr.core.buffer
from zarr.core.sync import sync

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a zarr store coroutine to its result from synchronous code.

    Relies on `zarr.core.sync.sync` (zarr's internal loop runner; zarr 3.1 has no public
    synchronous store API)."""
    return sync(coroutine)


async def _collect(agen) -> list[str]:
    return [key async for key in agen]


def list_keys(store, prefix: str) -> list[str]:
    """Every key under `prefix` in `store` (the public async `Store.list_prefix`, run here)."""
    return run(_collect(store.list_prefix(prefix)))


def read_key(store, key: str) -> bytes | None:
    """The bytes stored under `key`, None when there is none.

    Relies on `zarr.core.buffer.default_buffer_prototype`, the buffer type `Store.get` must be
    given (zarr exports no public default)."""
    raw = run(store.get(key, zarr.core.buffer.default_buffer_prototype()))
    return None if raw is None else raw.to_bytes()


def delete_key(store, key: str) -> None:
    """Delete the object under `key` (the public async `Store.delete`, run here)."""
    run(store.delete(key))


def key_size(store, key: str) -> int:
    """Bytes of the object under `key`: one stat or HEAD (the public async `Store.getsize` of
    the store under any wrapper: a `WrapperStore` answers by reading the whole object)."""
    return int(run(_unwrap(store).getsize(key)))


def _unwrap(store):
    """The store under any `WrapperStore`s: relies on `WrapperStore._store`, the attribute
    zarr's docstring names as the way to reach the wrapped store."""
    while isinstance(store, zarr.storage.WrapperStore):
        store = store._store
    return store


def listing_with_sizes(store, prefix: str) -> dict[str, int | None]:
    """{key: size in bytes, or None where the store cannot say} of every object under
    `prefix`, in one listing: local disk, a directory walk and a stat per file; fsspec, one
    `find` (one paginated LIST on object storage, sizes included).

    zarr's `list_prefix` gives keys only; asking each key's size would be one request per
    shard. Relies on `LocalStore.root` (public) and, for fsspec stores, on
    `FsspecStore.fs`/`.path` (public) and `AsyncFileSystem._find`: fsspec's async method
    names carry a leading underscore by convention (its documented async API), and the
    store's filesystem is asynchronous, so its synchronous `find` cannot be called."""
    inner = _unwrap(store)
    if isinstance(inner, zarr.storage.LocalStore):
        return {key: (inner.root / key).stat().st_size for key in list_keys(inner, prefix)}
    if isinstance(inner, zarr.storage.FsspecStore):
        found = run(inner.fs._find(f"{inner.path}/{prefix}", detail=True, withdirs=False))
        return {
            path.removeprefix(f"{inner.path}/"): info.get("size") for path, info in found.items()
        }
    return dict.fromkeys(list_keys(store, prefix))


class TranslatingStore(zarr.storage.WrapperStore):
    """A store whose every call runs inside `translate()`, a context manager that turns
    transport failures (S3 down mid-write, bad credentials) into one-line errors; missing keys
    still read as missing.

    Relies on zarr's `WrapperStore` extension points: the wrapped store in `_store` and
    `_with_store`, which zarr calls to rewrap a derived store (`with_read_only`)."""

    def __init__(self, store, translate: Callable[[], AbstractContextManager]) -> None:
        super().__init__(store)
        self._translate_errors = translate

    def _with_store(self, store):
        return type(self)(store, self._translate_errors)

    def __reduce__(self):  # pickled into dask workers with the group
        return (type(self), (self._store, self._translate_errors))

    async def _translate(self, agen):
        with self._translate_errors():
            async for item in agen:
                yield item

    def list(self):
        return self._translate(self._store.list())

    def list_prefix(self, prefix):
        return self._translate(self._store.list_prefix(prefix))

    def list_dir(self, prefix):
        return self._translate(self._store.list_dir(prefix))


def _translated(name: str):
    """The store method `name`, forwarded to the wrapped store inside `translate()`."""

    async def method(self, *args, **kwargs):
        with self._translate_errors():
            return await getattr(self._store, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in ("get", "get_partial_values", "exists", "set", "set_if_not_exists", "delete",
              "is_empty"):  # fmt: skip
    setattr(TranslatingStore, _name, _translated(_name))


def strip_protocol(fs, path: str) -> str:
    """`path` as `fs` names it in its answers (no protocol, no trailing slash).

    Relies on `AbstractFileSystem._strip_protocol`, the classmethod fsspec itself calls to
    normalise every path; the public `fsspec.core.strip_protocol` guesses the filesystem from
    the URL, so it would read an already stripped `bucket/key` as a relative local path."""
    return fs._strip_protocol(path)
