"""Atomic writes: a temporary file next to the target, renamed into place only on success.

The temporary name is known before the file is created, so an exception or a signal at
any point (KeyboardInterrupt, or SIGTERM/SIGHUP through ``core.signals``) removes it. A
live temporary file is held under an exclusive ``flock``; a process killed without a
chance to clean up (SIGKILL, power loss) leaves an unlocked
``.<stem>.mt-<nonce>-<pid>-<check>.part<ext>`` that the next write into that folder
removes. Only names of exactly that form whose ``check`` (a hash of nonce and pid) matches
are ever removed, so a user's file that merely looks like a temporary file is never
touched. The stem is shortened so that the temporary name fits NAME_MAX (255 bytes).
``atomic_open`` writes through a file that has no name at all until it is complete (Linux
``O_TMPFILE``), for plaintext.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from medtools.core.io.formats import split_ext

# .<stem>.mt-<nonce>-<pid>-<check>.part<ext>: only medtools makes names whose check matches
PART_PATTERN = re.compile(r"^\.(?P<stem>.*)\.mt-(?P<nonce>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-(?P<check>[0-9a-f]{8})\.part(?P<ext>\.[^/]*)?$", re.DOTALL)
NAME_MAX = 255

_cleaned: set[str] = set()
_renamed_hooks: list[Callable[[Path], None]] = []


def _check(nonce: str, pid: str) -> str:
    return hashlib.sha256(f"medtools temporary file\x00{nonce}\x00{pid}".encode()).hexdigest()[:8]


def _clip(text: str, limit: int) -> str:
    data = text.encode("utf-8", "surrogateescape")
    return text if len(data) <= limit else data[: max(limit, 0)].decode("utf-8", "ignore")


def part_name(target: Path | str) -> Path:
    """A fresh temporary name beside ``target``: .<stem>.mt-<nonce>-<pid>-<check>.part<ext>.

    The extension is kept (writers pick the format from it); the stem is shortened so that
    the name stays within NAME_MAX bytes whatever the length of the target's name.
    """
    target = Path(target)
    stem, ext = split_ext(target)
    nonce, pid = secrets.token_hex(4), str(os.getpid())
    tag = f".mt-{nonce}-{pid}-{_check(nonce, pid)}.part"
    if len(("." + tag + ext).encode("utf-8", "surrogateescape")) > NAME_MAX:
        ext = ""  # an "extension" this long is no format anyone writes by
    room = NAME_MAX - len(("." + tag + ext).encode("utf-8", "surrogateescape"))
    return target.parent / f".{_clip(stem, room)}{tag}{ext}"


def is_part_name(name: str) -> bool:
    """``name`` is a temporary name that medtools made (pattern and check both match)."""
    match = PART_PATTERN.match(name)
    return bool(match) and _check(match["nonce"], match["pid"]) == match["check"]


def clean_stale(folder: Path | str) -> list[Path]:
    """Remove the temporary files that earlier, killed runs left in ``folder`` (once per process).

    A temporary file whose writer is alive holds an flock and is left alone, so parallel
    shards writing into one folder never remove each other's files.
    """
    folder = Path(folder)
    key = os.path.abspath(folder)
    if key in _cleaned:
        return []
    _cleaned.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if not is_part_name(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            os.close(fd)
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(private: bool) -> int:
    return 0o600 if private else 0o666 & ~_umask()


@contextlib.contextmanager
def on_renamed(callback: Callable[[Path], None]) -> Iterator[None]:
    """Call ``callback(path)`` as soon as each atomic write is renamed into place (e.g. print it)."""
    _renamed_hooks.append(callback)
    try:
        yield
    finally:
        _renamed_hooks.remove(callback)


def _renamed(target: Path) -> None:
    for hook in list(_renamed_hooks):
        hook(target)


@contextlib.contextmanager
def atomic_path(target: Path | str, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it into place only on success.

    On any exception (KeyboardInterrupt and the signals of ``core.signals`` included) the
    temporary file is removed and the target is left untouched. ``private`` gives the
    result mode 0600 (secrets); otherwise the usual umask mode.
    """
    from medtools.core.context import current

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent)
    tmp = part_name(target)
    fd = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # live: clean_stale of another process leaves it
        yield tmp
        os.chmod(tmp, _mode(private))
        current().check_cancelled()  # interrupted meanwhile: never publish
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)
    _renamed(target)


def _link_anonymous(fd: int, name: Path) -> bool:
    """Give an O_TMPFILE file a name; False where the kernel or sandbox does not allow it."""
    try:
        os.link(f"/proc/self/fd/{fd}", name, follow_symlinks=True)
        return True
    except OSError:
        pass
    try:  # linkat(fd, "", AT_FDCWD, name, AT_EMPTY_PATH)
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.linkat(fd, b"", -100, os.fsencode(name), 0x1000) == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def atomic_open(target: Path | str, *, private: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file for ``target`` that has no name on disk until it is complete.

    With ``O_TMPFILE`` the bytes written live in an unnamed inode: a crash, a signal, even
    SIGKILL leaves nothing behind. On success the file is linked beside the target and
    renamed over it. Where ``O_TMPFILE`` is not available this is ``atomic_path``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target.parent)
    try:
        fd = os.open(target.parent, os.O_TMPFILE | os.O_RDWR, 0o600)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        with atomic_path(target, private=private) as tmp, open(tmp, "wb") as handle:
            yield handle
        return
    handle = os.fdopen(fd, "w+b")
    from medtools.core.context import current

    tmp: Path | None = None
    try:
        yield handle
        handle.flush()
        os.fchmod(fd, _mode(private))
        tmp = part_name(target)
        if not _link_anonymous(fd, tmp):
            # no way to name the inode: copy the finished file into a named temporary
            handle.seek(0)
            with open(tmp, "xb") as named:
                shutil.copyfileobj(handle, named, 1 << 20)
            os.chmod(tmp, _mode(private))
        current().check_cancelled()  # interrupted meanwhile: never publish
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        handle.close()
    _renamed(target)
