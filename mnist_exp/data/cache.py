"""Decoded arrays kept as uncompressed .npy files, so later runs skip gzip and CSV parsing.

An entry is keyed by the dataset's name and the source files' paths, sizes and mtimes; it is read
straight into aligned buffers, and written once, by one writer, atomically: parallel runs that miss it
wait for that writer and read what it wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from mnist_exp.data.formats import SPLIT_NAMES, RawData
from mnist_exp.data.memory import aligned_empty

log = logging.getLogger(__name__)


def cached(location: Path, name: str, cache_dir: Path | None, decode: Callable[[], RawData]) -> RawData:
    """Decode once; later calls read uncompressed .npy files, keyed by the source files' size and mtime.

    `location` is the file or folder `decode` reads; the result names it as its source. Without a
    `cache_dir`, this is `decode()`.
    """
    if cache_dir is None:
        return dataclasses.replace(decode(), source=str(location))
    entry = cache_dir / f"{name}-{_fingerprint(location)}"
    found = _read_entry(entry, location)
    if found is not None:
        return found
    # One writer per entry: parallel runs (a search's workers) that miss it wait for the first to write it.
    with _entry_lock(entry) as locked:
        found = _read_entry(entry, location) if locked else None
        if found is not None:
            return found
        raw = dataclasses.replace(decode(), source=str(location))
        if locked:
            _write_cache(entry, raw)
    return raw


def _read_entry(entry: Path, location: Path) -> RawData | None:
    if not entry.is_dir():
        return None
    try:
        arrays = {key: _read_npy(entry / f"{key}.npy") for key in SPLIT_NAMES}
        return RawData(source=str(location), **arrays)
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable cache %s (%s)", entry, error)
        return None


@contextlib.contextmanager
def _entry_lock(entry: Path) -> Iterator[bool]:
    """An exclusive lock on `entry` across processes; False when the cache folder cannot hold a lock file
    (then nothing is cached, and the data is decoded all the same)."""
    import fcntl

    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        stream = open(entry.with_name(f"{entry.name}.lock"), "a")
    except OSError as error:
        log.warning("not caching decoded data in %s (%s)", entry.parent, error)
        yield False
        return
    with stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)


def _read_npy(path: Path) -> np.ndarray:
    """np.load, but straight into an aligned buffer, so nothing copies the data again to align it."""
    with open(path, "rb") as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        if fortran_order or dtype.hasobject:
            raise ValueError(f"{path.name} is not a C-ordered numeric array")
        array = aligned_empty(shape, dtype)
        view = memoryview(array.reshape(-1).view(np.uint8))
        if stream.readinto(view) != array.nbytes:
            raise ValueError(f"{path.name} is truncated")
    return array


def _write_cache(entry: Path, raw: RawData) -> None:
    # Written to a private folder, then renamed: parallel runs never see half a cache entry.
    partial = entry.with_name(f"{entry.name}.partial-{os.getpid()}-{threading.get_ident()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        for key in SPLIT_NAMES:
            np.save(partial / f"{key}.npy", getattr(raw, key), allow_pickle=False)
        os.replace(partial, entry)
    except OSError as error:
        log.warning("could not cache decoded data in %s (%s)", entry, error)
    finally:
        if partial.exists():
            for child in partial.iterdir():
                child.unlink()
            partial.rmdir()


def _fingerprint(location: Path) -> str:
    files = sorted(location.iterdir()) if location.is_dir() else [location]
    sha = hashlib.sha256()
    for file in files:
        if file.is_file():
            stat = file.stat()
            sha.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return sha.hexdigest()[:16]
