"""Where a sweep's files live: a local folder, or an fsspec URL (s3://bucket/prefix, gs://..., file://).

`output_dir: outputs` is a local folder, used through pathlib as it always was. `output_dir:
s3://bucket/studies` (any protocol fsspec knows) puts the run store in an object store that every
node of a cluster reaches without a shared filesystem. The store keeps its guarantees there by
three rules:

- a record is written whole, in one put: an object store has no rename, but a put is atomic
  (readers see the old object or the new one), which is what temp file + rename gives locally;
- a run trains in a node-local scratch folder and is pushed to the store at each checkpoint and at
  the end, result.json last (scaling/staging.py), so a run resumes on any node;
- the driver lock is a flock on this machine, and a lease record in the store excludes drivers on
  other machines (scaling/lease.py).

The backend is fsspec's: s3:// needs `s3fs` (`pip install s3fs`), gs:// `gcsfs`, with credentials
from the usual places (environment, ~/.aws, the instance's role). `file:///abs/path` is the local
filesystem through the same code path (the tests use it to exercise the URL path end to end).

`RemotePath` offers the part of pathlib.Path that the run store and the analysis use, so they take
either kind: `location(text)` returns a Path for a local folder and a RemotePath for a URL.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Iterator

from scaling.errors import UserError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]+)://")


def is_url(location: str | os.PathLike) -> bool:
    """True for 'scheme://...' (two letters or more, so a Windows drive is not a scheme)."""
    return isinstance(location, (str, RemotePath)) and bool(_SCHEME.match(str(location)))


def location(text: str | os.PathLike) -> "Path | RemotePath":
    """A local Path, or a RemotePath for an fsspec URL."""
    if isinstance(text, RemotePath):
        return text
    return RemotePath(str(text)) if is_url(text) else Path(text)


def local_state_dir() -> Path:
    """This machine's folder for what must not go to a shared store (locks, scratch, data cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "isoflop-diffusion"


def url_key(url: str) -> str:
    """A short stable name for a URL, for per-URL local files (locks, scratch folders)."""
    return hashlib.sha1(url.encode()).hexdigest()[:16]


def _filesystem(url: str):
    """(fsspec filesystem, path) for a URL; a missing backend or unknown protocol is a UserError."""
    import fsspec.core

    scheme = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:  # fsspec names the package: "Install s3fs to access S3"
        raise UserError(f"{url}: the {scheme}:// protocol needs a package fsspec did not find "
                        f"({err}); pip install it into this environment") from None
    except ValueError as err:
        raise UserError(f"{url}: {err}; use a local folder or a URL fsspec knows (s3://, gs://, "
                        "file://)") from None


class RemotePath:
    """A file or folder under an fsspec URL, with the pathlib methods the run store uses.

    Reads go to the store every time (the listing cache is dropped first), because other processes
    on other nodes write the same store."""

    def __init__(self, url: str, *, _fs=None, _path: str | None = None, _is_dir: bool | None = None):
        if _fs is None:
            _fs, _path = _filesystem(url)
        self.fs, self.path = _fs, _path.rstrip("/") or _path
        self._known_dir = _is_dir  # from a listing: saves a request per child in iterdir()

    # -- names ------------------------------------------------------------------------------
    def __truediv__(self, name: str) -> "RemotePath":
        return RemotePath("", _fs=self.fs, _path=f"{self.path}/{str(name).strip('/')}")

    def __str__(self) -> str:
        return self.fs.unstrip_protocol(self.path)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind("."):] if "." in name.lstrip(".") else ""

    @property
    def parent(self) -> "RemotePath":
        return RemotePath("", _fs=self.fs, _path=self.path.rsplit("/", 1)[0])

    # -- reads ------------------------------------------------------------------------------
    def _fresh(self) -> None:
        self.fs.invalidate_cache(self.path)

    def read_bytes(self) -> bytes:
        self._fresh()
        return self.fs.cat_file(self.path)  # FileNotFoundError when absent

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def exists(self) -> bool:
        self._fresh()
        return self.fs.exists(self.path)

    def is_file(self) -> bool:
        self._fresh()
        return self.fs.isfile(self.path)

    def is_dir(self) -> bool:
        if self._known_dir is not None:
            return self._known_dir
        self._fresh()
        return self.fs.isdir(self.path)

    def iterdir(self) -> Iterator["RemotePath"]:
        self._fresh()
        try:
            entries = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            return iter(())
        children = []
        for entry in entries:
            path = entry["name"].rstrip("/")
            if path != self.path:  # some backends list a folder's own marker
                children.append(RemotePath("", _fs=self.fs, _path=path,
                                           _is_dir=entry.get("type") == "directory"))
        return iter(children)

    def find_relative(self) -> set[str]:
        """Every file under this folder, as paths relative to it (one listing, paged)."""
        self._fresh()
        try:
            found = self.fs.find(self.path)
        except FileNotFoundError:
            return set()
        return {path[len(self.path):].lstrip("/") for path in found}

    def read_many(self, relative: list[str]) -> dict[str, bytes]:
        """The files at these relative paths, fetched as one batch (concurrently on object
        stores); a missing one is left out."""
        if not relative:
            return {}
        self._fresh()
        full = [self.fs._strip_protocol(f"{self.path}/{name}") for name in relative]
        blobs = self.fs.cat(full, on_error="omit")  # keyed as the backend names the paths
        by_path = {self.fs._strip_protocol(path).rstrip("/"): blob for path, blob in blobs.items()}
        return {name: by_path[path] for name, path in zip(relative, full) if path in by_path}

    # -- writes -----------------------------------------------------------------------------
    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        self.fs.makedirs(self.path, exist_ok=True)  # object stores have no folders: a no-op there

    def write_bytes(self, data: bytes) -> None:
        """Write the whole object at once: atomic on object stores; on file:// a temp + rename."""
        if _is_local(self.fs):
            from scaling.store import write_atomic_bytes

            write_atomic_bytes(Path(self.path), data)
            return
        self.fs.pipe_file(self.path, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        self._fresh()
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    def upload(self, local: Path) -> None:
        """Copy a local file, or a local folder's files (recursively), to this location."""
        local = Path(local)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for file in files:
            target = self if file == local else self / file.relative_to(local).as_posix()
            if _is_local(self.fs):
                self.fs.makedirs(target.parent.path, exist_ok=True)
            self.fs.put_file(str(file), target.path)

    def download(self, local: Path) -> None:
        """Copy this file, or this folder's files (recursively), to a local path."""
        local = Path(local)
        self._fresh()
        if self.fs.isfile(self.path):
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self.path, str(local))
            return
        for path in self.fs.find(self.path):
            target = local / path[len(self.path):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(target))


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol
