"""Files written whole or not at all, and files checked before they are read; FormatError.

    atomic_write(path)   a temporary file in the same directory, renamed onto path on success
    open_regular(path)   open for reading a regular file only (a FIFO would block), one clear error
    FormatError          a file that is missing or not what it should be; its message names the file

Every module that writes or reads a file (formats, rundir, download, plot, prepro, benchmarks)
takes these from here.
"""
import contextlib
import errno
import os
import secrets
import stat


class FormatError(ValueError):
    """A file that is missing, or not what it should be (not what llm.c would write, not what a run
    can have written)."""


# ----------------------------------------------------------------------------------------------
# writing files atomically

@contextlib.contextmanager
def atomic_write(path):
    """Yield a binary file that replaces `path` only if the with-block finishes without error.

    The data goes to a temporary file in the same directory (so os.replace is atomic), which is
    flushed to disk and renamed onto `path` on success, and removed on any exception.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS and not e.filename:
            raise disk_error(e, path) from None
        raise


# a write that fails for lack of space: named by the file it was writing (f.write's OSError is not)
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def disk_error(e, path):
    """An OSError like e that names path: "[Errno 28] No space left on device: 'out/log.jsonl'"."""
    return OSError(e.errno, f"{e.strerror or e} (while writing)", os.fspath(path))


# what a temporary file of atomic_write is called: .<name>.<12 hex digits>.tmp
TEMP_NAME = r"\..+\.[0-9a-f]{12}\.tmp"


# ----------------------------------------------------------------------------------------------
# reading: the checks before a file is read

def open_regular(path, mode="rb", **kw):
    """Open a regular file for reading, turning a missing/unreadable file into a FormatError.

    A FIFO, device or directory is refused: opening a FIFO for reading would block until some
    writer appears (O_NONBLOCK makes the open return at once, fstat then says what it is).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot open: {e.strerror or e}") from None
    st = os.fstat(fd)
    os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
        raise FormatError(f"{path}: not a regular file ({kind})")
    try:
        return open(path, mode, **kw)  # by name again, so f.name is the path for error messages
    except OSError as e:
        raise FormatError(f"{path}: cannot open: {e.strerror or e}") from None
