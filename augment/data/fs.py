"""Local paths and pyarrow filesystem URIs (s3://, gs://, file://) behind one interface."""

from __future__ import annotations

import hashlib
import os
import posixpath
import urllib.parse

import pyarrow.fs as pafs

from augment.core.errors import AugmentError


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


HASH_CHUNK_BYTES = 1 << 20


def size_and_sha256(fs: pafs.FileSystem, path: str) -> tuple[int, str]:
    """(bytes, sha256 hex) of a file, streamed in HASH_CHUNK_BYTES reads (memory holds one chunk)."""
    digest = hashlib.sha256()
    size = 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write to a temporary sibling, then move into place: readers never see a partial file."""
    tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    """Delete a file, best effort: one already gone, or that cannot be deleted now, is left."""
    try:
        fs.delete_file(path)
    except OSError:
        pass


def is_within(path: str, base: str) -> bool:
    """Whether `path` is `base` or lies below it, comparing normalised paths (`..` resolved by name, no I/O)."""
    path, base = posixpath.normpath(path), posixpath.normpath(base)
    return path == base or path.startswith(base.rstrip("/") + "/")


def _comparable(uri: str) -> tuple[str, str]:
    """(scheme, path) of a path or URI, parsed without contacting any server; local paths with symlinks resolved."""
    if "://" not in uri:
        return "file", os.path.realpath(uri)
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme == "file":
        return "file", os.path.realpath(parts.path)
    return parts.scheme, "/" + (parts.netloc + parts.path).strip("/")


def same_or_nested(a: str, b: str) -> bool:
    """Whether paths/URIs `a` and `b` name the same folder or one lies inside the other (on one filesystem)."""
    (kind_a, path_a), (kind_b, path_b) = _comparable(a), _comparable(b)
    return kind_a == kind_b and (is_within(path_a, path_b) or is_within(path_b, path_a))


def check_apart(output: str, source: str, what: str = "the input") -> None:
    """Raise AugmentError when `output` is `source`, inside it or holds it: writing there could destroy the input."""
    if same_or_nested(output, source):
        raise AugmentError(
            f"output {output} and {what} {source} are the same folder or one holds the other; choose an output "
            f"outside the input"
        )


def check_not_working_folder(uri: str) -> None:
    """Raise AugmentError for an empty output path, or a local one that is the current folder or a folder above it."""
    if not uri.strip():
        raise AugmentError("the output path is empty; name a folder to write")
    kind, path = _comparable(uri)
    if kind == "file" and is_within(os.path.realpath(os.getcwd()), path):
        raise AugmentError(f"{uri} is the current folder or a folder above it; choose an output folder below it")
