"""Uploads in, files out: decoded in memory where the reader can, never under their own names.

PNG/JPEG/TIFF are decoded from the upload's bytes by the I/O layer's Pillow reader and NPY/NPZ
by numpy, in memory. NIfTI and DICOM readers of :mod:`medtools.core.io` take a path (nibabel's
size checks and gzip handling, pydicom's dataset with its tags), so those uploads are written
to a private per-request temporary folder (0700, inside the server's own private folder, under
a neutral name keeping only the extension), read, and the folder is removed before the answer
is sent. Outputs go the same way round: PNG/JPEG/TIFF are encoded in memory by the same
Pillow writer, the others through ``write_image`` into the request's folder. Error messages name the upload, never a
server path.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medtools.core.errors import InputError, MedtoolsError

ROOT_PREFIX = "medtools-serve-"
IN_MEMORY_READ = ("png", "jpeg", "tiff", "npy", "npz")  # formats decoded from bytes


def private_root(parent: Path | None = None) -> Path:
    """The server's private (0700) temporary folder, ``medtools-serve-<pid>-XXXX``.

    Folders left by servers that died without cleaning up (SIGKILL, power loss: they may
    hold uploads) are removed first, when their process is gone.
    """
    parent = Path(parent or tempfile.gettempdir())
    for old in parent.glob(ROOT_PREFIX + "*-*"):
        pid = old.name[len(ROOT_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not old.is_dir() or old.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's
    root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=parent))
    os.chmod(root, 0o700)
    return root


def safe_name(name: str | None, default: str = "upload") -> str:
    """The upload's base name with no folders, odd characters or leading dots."""
    base = Path((name or "").replace("\\", "/")).name
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in base).lstrip(".")
    return cleaned[:128] or default


class RequestFiles:
    """One request's uploads and outputs. The private folder is made only when a path-only
    reader or writer needs it, and removed by ``close`` (the ``request_files`` dependency
    calls it after the endpoint, whatever happened)."""

    def __init__(self, root: Path):
        self.root = root
        self._folder: Path | None = None
        self.names: dict[str, str] = {}  # temporary path → the upload's own (safe) name

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="req-", dir=self.root))
        return self._folder

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def scrub(self, message: str) -> str:
        """The message with the upload's name in place of a temporary path."""
        for path, name in sorted(self.names.items(), key=lambda item: -len(item[0])):
            message = message.replace(path, name)
        if self._folder is not None:
            message = message.replace(str(self._folder) + os.sep, "")
        return message

    # -- in
    def read(self, upload: Any, index: int = 0, *, nan_policy: str | None = None) -> Any:
        """An UploadFile → Image, with ``meta["path"]`` the upload's safe name (for messages)."""
        name = safe_name(upload.filename)
        return self.decode(name, upload.file.read(), index, nan_policy=nan_policy)

    def decode(self, name: str, data: bytes, index: int = 0, *, nan_policy: str | None = None) -> Any:
        from medtools.core.io import format_of, read_image, split_ext

        fmt = format_of(name)
        try:
            if fmt in IN_MEMORY_READ:
                image = _decode_in_memory(name, fmt, data)
            elif name.lower().endswith(".zip"):
                # a zip of one DICOM series: its files (by their own names, never its folders)
                # into a private per-request folder, read as a series
                series = self.folder / f"series{index}"
                _unzip_flat(data, series, name)
                self.names[str(series)] = name
                image = read_image(series, nan_policy=nan_policy)
            else:
                # NIfTI, DICOM and extension-less (PACS exports are often DICOM) need a path:
                # a private per-request temporary file, removed with the request's folder
                ext = split_ext(name)[1].lower()
                target = self.folder / f"input{index}{ext if ext.replace('.', '').isalnum() or ext == '.nii.gz' else ''}"
                target.write_bytes(data)
                os.chmod(target, 0o600)
                self.names[str(target)] = name
                image = read_image(target, nan_policy=nan_policy)
        except MedtoolsError as exc:
            exc.args = (self.scrub(str(exc)),)
            raise
        image.meta["source"] = image.meta["path"] = name
        return image

    def series(self, datasets: list[Any], name: str, *, nan_policy: str | None = None) -> Any:
        """pydicom Datasets of one series (from the PACS) → Image: written under neutral numbered
        names into the request's private folder and read as a series; named ``name`` in messages."""
        import pydicom

        from medtools.core.io import read_image
        from medtools.core.io.dicom import pydicom_major

        folder = self.folder / "pacs"
        folder.mkdir(mode=0o700)
        for i, ds in enumerate(datasets):  # Part 10 files (preamble, file meta), as `pacs pull` writes them
            options = {"enforce_file_format": True} if pydicom_major() >= 3 else {"write_like_original": False}
            pydicom.dcmwrite(str(folder / f"{i:05d}.dcm"), ds, **options)
        self.names[str(folder)] = name
        try:
            image = read_image(folder, nan_policy=nan_policy)
        except MedtoolsError as exc:
            exc.args = (self.scrub(str(exc)),)
            raise
        image.meta["source"] = image.meta["path"] = name
        return image

    # -- out
    def encode(self, image: Any, fmt: str, name: str) -> bytes:
        """The file bytes of ``image`` in ``fmt`` (what ``write_image`` writes to ``name``)."""
        from medtools.core.io import RASTER_FORMATS, write_image

        if fmt in RASTER_FORMATS:
            from medtools.core.io.raster import write_raster

            buffer = io.BytesIO()
            write_raster(image, buffer, fmt)  # Pillow writes to a file object as to a path
            return buffer.getvalue()
        target = self.folder / safe_name(name)
        try:
            return write_image(image, target, format=fmt).read_bytes()  # NIfTI, DICOM, NPY/NPZ
        except MedtoolsError as exc:
            exc.args = (self.scrub(str(exc)).replace(str(target), target.name),)
            raise


def _decode_in_memory(name: str, fmt: str, data: bytes) -> Any:
    import numpy as np

    from medtools.core.io import Image

    buffer = io.BytesIO(data)
    try:
        if fmt == "npy":
            return Image(np.load(buffer, allow_pickle=False), format="npy", meta={})
        if fmt == "npz":
            from medtools.core.io.images import _read_npz

            return _read_npz(buffer)  # numpy reads a file object as a path
        from medtools.core.io.raster import read_raster

        return read_raster(buffer, fmt)  # Pillow reads a file object as a path
    except MedtoolsError:
        raise
    except Exception as exc:  # any library error on a bad upload is an input problem, as read_image says
        reason = str(exc).replace(repr(buffer), name)
        raise InputError(f"cannot read {name}: {type(exc).__name__}: {reason}") from exc


def _unzip_flat(data: bytes, folder: Path, name: str) -> None:
    """The regular files of a zip into ``folder`` (0700), each under a neutral numbered name: no
    member's path is used, so no member leaves the folder; at most as many bytes as the upload
    limit already allowed, times a small factor against zip bombs."""
    import io
    import zipfile

    from medtools.core.errors import InputError

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
    except zipfile.BadZipFile as exc:
        raise InputError(f"cannot read {name}: {exc}") from None
    if not members:
        raise InputError(f"cannot read {name}: the zip holds no files")
    if sum(m.file_size for m in members) > 20 * max(len(data), 1 << 20):
        raise InputError(f"cannot read {name}: it unpacks to more than 20 times its size")
    folder.mkdir(mode=0o700)
    for i, member in enumerate(members):
        target = folder / f"{i:05d}.dcm"
        with archive.open(member) as source, open(target, "wb") as sink:
            sink.write(source.read())
        os.chmod(target, 0o600)
