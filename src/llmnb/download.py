"""Downloading a file: requests with urllib3's Retry, a tqdm progress bar, an atomic write.

Like llm.c's dev/data/data_common.py `download_file` (requests + tqdm), plus what a training run
needs: retries with backoff for connection errors, timeouts and 5xx answers (urllib3's Retry, which
also honours Retry-After), a file that appears only when complete, and one line saying what failed.
"""
import os
import sys

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from .fileio import atomic_write


class DownloadError(RuntimeError):
    """A download that failed; the message is one line naming the URL and what went wrong, and
    .reason that last part alone ("HTTP 404 Not Found", "NameResolutionError: ...")."""

    def __init__(self, message, reason=None):
        super().__init__(message)
        self.reason = reason or message


def _one_line(e):
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class _SayRetry(Retry):
    """urllib3's Retry that says on stderr why it retries (urllib3 only logs it)."""
    quiet = False

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        why = f"HTTP {response.status}" if response is not None and response.status else _one_line(error)
        if not self.quiet:
            print(f"download failed ({why}); retrying ({new.total} retr{'y' if new.total == 1 else 'ies'} left)",
                  file=sys.stderr, flush=True)
        return new


class _QuietRetry(_SayRetry):
    quiet = True


def _session(retries, backoff, quiet=False):
    retry = (_QuietRetry if quiet else _SayRetry)(total=retries, backoff_factor=backoff,
                                                  status_forcelist=(500, 502, 503, 504),
                                                  allowed_methods=("GET",), raise_on_status=False)
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=retry))
    s.mount("https://", HTTPAdapter(max_retries=retry))
    return s


def download(url, path, *, timeout=30, retries=3, chunk=1 << 20, progress=True, backoff=1.0, on_start=None,
             quiet=False):
    """Download url to path, streamed, with a tqdm progress bar on stderr (progress=False: none).
    on_start(): called once the server has answered, before the body is read (to say what is
    being fetched only when it is). quiet: no line for each retry (a download that may fail
    without harm: its caller says in one line what it does instead).

    Connection errors, timeouts and 5xx answers are retried up to `retries` times, waiting about
    backoff, 2*backoff, 4*backoff... seconds; a 4xx is not. A body cut short (fewer bytes than its
    Content-Length) fails: the file appears at path only when complete (temp file + os.replace), so
    a failure leaves nothing behind and DownloadError says what went wrong.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fail = f"download of {url} failed"
    try:
        # identity: Content-Length then counts the bytes we write (no transparent gunzip)
        with _session(retries, backoff, quiet) as s, s.get(url, stream=True, timeout=timeout,
                                                    headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status_code >= 400:
                tries = f" after {retries + 1} attempts" if resp.status_code >= 500 and retries else ""
                why = f"HTTP {resp.status_code} {resp.reason}"
                raise DownloadError(f"{fail}{tries}: {why}", why)
            if on_start is not None:
                on_start()
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with atomic_write(path) as f, tqdm(
                    total=total, desc=os.path.basename(path), unit="B", unit_scale=True,
                    unit_divisor=1024, file=sys.stderr, disable=not progress) as bar:
                for data in resp.iter_content(chunk_size=chunk):
                    f.write(data)
                    bar.update(len(data))
                if total is not None and f.tell() != total:
                    raise DownloadError(f"{fail}: connection closed after {f.tell()} of {total} bytes")
    except requests.exceptions.ChunkedEncodingError as e:  # urllib3: the body ended early
        raise DownloadError(f"{fail}: connection broken mid-body ({type(e).__name__})") from None
    except requests.RequestException as e:
        # Retry gave up: requests wraps urllib3's MaxRetryError, whose .reason is the last failure
        inner = e.args[0] if e.args else e
        reason = getattr(inner, "reason", inner)
        tries = f" after {retries + 1} attempts" if retries else ""
        raise DownloadError(f"{fail}{tries}: {_one_line(reason)}", _one_line(reason)) from None
    except OSError as e:
        raise DownloadError(f"{fail}: cannot write {path}: {_one_line(e)}") from None
    return path
