"""Local paths and pyarrow filesystem URIs (s3://, gs://, file://) behind one interface."""

from __future__ import annotations

import os
import posixpath

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as s3://bucket/prefix?endpoint_override=..."""
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def is_uri(value: str) -> bool:
    """True for a URI with a scheme (s3://..., file://...); False for a local path."""
    return "://" in value


def absolute(uri_or_path: str, base: str | None = None) -> str:
    """A local path made absolute (`~` expanded, relative to `base`, default the current folder) and normalised;
    a URI unchanged. Paths that leave this process (to Ray workers, into job files and cards) go through this, so a
    worker whose working folder differs from the driver's reads and writes the same files."""
    if is_uri(uri_or_path):
        return uri_or_path
    path = os.path.expanduser(uri_or_path)
    return os.path.normpath(os.path.join(base if base is not None else os.getcwd(), path))


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def list_files(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list[str]:
    """Paths of the plain files under `path` (empty when it does not exist), sorted."""
    if not is_dir(fs, path):
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write to a temporary sibling, then move into place: readers never see a partial file."""
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)
