"""Downloads from Kaggle, torchvision and URLs: idempotent, atomic, never waiting forever.

A download goes into ``<downloads>/<name>.partial-XXXX`` and is renamed to its final name
only once complete, with a ``.complete`` marker inside; a second run finds the marker and
downloads nothing. An interrupted download leaves only a ``.partial-`` folder, which is never
read as data and is removed by the next attempt.

Every download runs under ``source.timeout_s``: a connection that receives nothing for that
long fails it, whichever client opened the connection (``network_timeout``). An archive URL
that trickles in (less than ``source.min_bytes_per_s`` over ``source.timeout_s``) fails too,
and an archive that would expand to more than ``source.max_expansion`` times its size, or
more than the free disk, is refused before anything is extracted.

URLs are logged and recorded only through ``redact_url``: passwords and signatures stay out
of logs, markers and tracking.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..console import Progress, format_seconds

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
DEFAULT_TIMEOUT_S = 60.0  # SourceConfig.timeout_s's default
DEFAULT_MIN_BYTES_PER_S = 1024.0  # SourceConfig.min_bytes_per_s's default
DEFAULT_MAX_EXPANSION = 100.0  # SourceConfig.max_expansion's default
PROGRESS_EVERY_S = 10.0  # without a terminal, a progress line this often
CHUNK_BYTES = 1 << 16  # read1 returns what has arrived, up to this: progress moves as bytes come
USER_AGENT = "vision-pipelines"


class DownloadError(RuntimeError):
    """A download failed; nothing partial was kept."""


class MissingCredentialsError(DownloadError):
    """No Kaggle credentials were found."""


def atomic_download(target: Path, fill: Callable[[Path], None], what: str,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Run ``fill(staging_dir)`` once for ``target``; later calls return the finished folder.

    ``<target>.lock`` is held throughout: a second download of the same target (two datasets
    with one source, two runs) waits for the first and then uses what it downloaded, and the
    leftovers of an interrupted download are removed only while no one else is downloading.
    """
    target = Path(target)
    what = redact_url(what)
    if (target / COMPLETE_MARKER).is_file():
        log.info("%s already downloaded in %s: not downloading again", what, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.with_name(f"{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another download of %s into %s to finish", what, target)
        lock.acquire()  # the other download is bounded by its own timeouts
    try:
        if (target / COMPLETE_MARKER).is_file():
            log.info("%s was downloaded into %s meanwhile: using it", what, target)
            return target
        return _download_into(target, fill, what, timeout_s)
    finally:
        lock.release()


def _download_into(target: Path, fill: Callable[[Path], None], what: str, timeout_s: float) -> Path:
    """``atomic_download``'s work, with ``target``'s lock held."""
    for leftover in target.parent.glob(f"{target.name}.partial-*"):
        log.warning("removing %s left by an interrupted download", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    log.info("downloading %s into %s", what, target)
    started = time.time()
    try:
        with network_timeout(timeout_s):
            fill(staging)
    except MissingCredentialsError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        cause = (f"nothing received for {timeout_s:g} s (source.timeout_s)" if _timed_out(error)
                 else f"{type(error).__name__}: {redact_url(str(error))}")
        raise DownloadError(f"downloading {what} failed ({cause}); nothing was kept, "
                            f"{target} is unchanged") from error
    (staging / COMPLETE_MARKER).write_text(json.dumps({"source": what, "seconds": time.time() - started}))
    if target.exists():  # a folder without the marker: an old, incomplete copy
        shutil.rmtree(target)
    os.replace(staging, target)
    log.info("downloaded %s to %s in %s", what, target, format_seconds(time.time() - started))
    return target


URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")


def redact_url(text: str) -> str:
    """``text`` with the secrets of every URL in it hidden: the user and password
    (``http://***@host/...``) and the query's values (``?X-Amz-Signature=***``); a signed or
    password-protected URL is logged, recorded and tracked only this way."""

    def redact(match: re.Match) -> str:
        parts = urllib.parse.urlsplit(match.group(0))
        if "@" not in parts.netloc and not parts.query and not parts.fragment:
            return match.group(0)  # nothing to hide: as written (urlunsplit would drop sqlite:////'s slashes)
        netloc = f"***@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
        query = "&".join(f"{pair.split('=', 1)[0]}=***" for pair in parts.query.split("&") if pair)
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    return URL.sub(redact, text)


@contextmanager
def network_timeout(seconds: float) -> Iterator[None]:
    """Inside, a connection that receives nothing for ``seconds`` fails with a timeout.

    urllib (torchvision, ``download_archive``) takes the socket default timeout; requests
    (Kaggle's client, Google Drive) passes "no timeout" explicitly unless told, so its adapter
    is given one too. Both are process-wide, and restored on the way out.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        from requests.adapters import HTTPAdapter
    except ImportError:  # no requests: nothing else to bound
        HTTPAdapter = None
    original = HTTPAdapter.send if HTTPAdapter else None

    def send(adapter, request, stream=False, timeout=None, *args, **kwargs):
        if timeout is None or (isinstance(timeout, (int, float)) and timeout > seconds):
            timeout = seconds
        return original(adapter, request, stream, timeout, *args, **kwargs)

    if HTTPAdapter:
        HTTPAdapter.send = send
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)
        if HTTPAdapter:
            HTTPAdapter.send = original


def _timed_out(error: BaseException | None) -> bool:
    """True when ``error`` or what caused it is a timeout (urllib wraps it, requests chains it)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, TimeoutError):
            return True
        reason = getattr(error, "reason", None)  # urllib.error.URLError
        error = reason if isinstance(reason, BaseException) else (error.__cause__ or error.__context__)
    return False


# --- Kaggle ----------------------------------------------------------------------------------

CREDENTIALS_HELP = (
    "No Kaggle credentials found. Provide them in one of these ways:\n"
    "  * conf/local/credentials.yml:  kaggle: {username: <user>, key: <api key>}\n"
    "  * environment variables KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN)\n"
    "  * ~/.kaggle/kaggle.json, as written by kaggle.com > Settings > API > Create New Token\n"
    "Or use a copy already on disk: "
    "--params=\"<dataset>.source.kind=local,<dataset>.source.path=/path/to/folder\""
)


def kaggle_credentials_present() -> bool:
    """True when the Kaggle client will find credentials without asking anyone."""
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    config_dir = Path(env.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def _kaggle_api():
    # Imported late: importing ``kaggle`` authenticates at once and calls exit() on failure.
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    return api


def _kaggle_client(api_factory: Callable):
    """The Kaggle client, built only when credentials exist: nothing ever prompts for them."""
    if not kaggle_credentials_present():
        raise MissingCredentialsError(CREDENTIALS_HELP)
    return api_factory()


def download_kaggle(dataset: str, downloads: Path, api_factory: Callable = _kaggle_api,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download and unzip Kaggle dataset ``owner/slug`` into ``downloads/owner__slug``."""
    target = Path(downloads) / dataset.replace("/", "__")

    def fill(staging: Path) -> None:
        _kaggle_client(api_factory).dataset_download_files(dataset, path=str(staging), unzip=True, quiet=False)

    return atomic_download(target, fill, f"Kaggle dataset {dataset}", timeout_s)


def download_kaggle_competition(competition: str, downloads: Path, api_factory: Callable = _kaggle_api,
                                timeout_s: float = DEFAULT_TIMEOUT_S,
                                max_expansion: float = DEFAULT_MAX_EXPANSION) -> Path:
    """Download and extract a Kaggle competition's files into ``downloads/kaggle_competition__<name>``
    (its rules must have been accepted on kaggle.com)."""
    target = Path(downloads) / f"kaggle_competition__{competition}"

    def fill(staging: Path) -> None:
        _kaggle_client(api_factory).competition_download_files(competition, path=str(staging), quiet=False)
        _extract_archives(staging, max_expansion)

    return atomic_download(target, fill, f"Kaggle competition {competition}", timeout_s)


# --- URLs (source.kind: url) ----------------------------------------------------------------

GOOGLE_DRIVE_ID = re.compile(r"/file/d/([\w-]+)|[?&]id=([\w-]+)")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz")


def download_url(url: str, downloads: Path, timeout_s: float = DEFAULT_TIMEOUT_S,
                 api_factory: Callable = _kaggle_api, min_bytes_per_s: float = DEFAULT_MIN_BYTES_PER_S,
                 max_expansion: float = DEFAULT_MAX_EXPANSION) -> Path:
    """``source.kind: url``: a Kaggle dataset or competition page, a Google Drive file link, or
    the URL of a zip or tar archive, told apart as ``opendatasets`` tells them apart.

    opendatasets' own ``download`` is not called as a whole: it prompts for Kaggle credentials
    when ``./kaggle.json`` is missing and takes any non-empty folder for a finished download.
    Here nothing prompts, and ``atomic_download`` decides what is finished.
    """
    from opendatasets.utils.googledrive import is_google_drive_url
    from opendatasets.utils.kaggle_direct import get_kaggle_dataset_id, is_kaggle_url
    from opendatasets.utils.network import is_url

    if is_kaggle_url(url):
        try:
            owner, slug = get_kaggle_dataset_id(url).split("/")
        except AssertionError:
            raise DownloadError(f"source.url={redact_url(url)}: not a Kaggle dataset or competition URL (expected "
                                "kaggle.com/datasets/<owner>/<slug> or kaggle.com/competitions/<name>)") from None
        if owner in ("c", "competitions"):
            return download_kaggle_competition(slug, downloads, api_factory, timeout_s, max_expansion)
        return download_kaggle(f"{owner}/{slug}", downloads, api_factory, timeout_s)
    if is_google_drive_url(url):
        return download_google_drive(url, downloads, timeout_s, max_expansion)
    if is_url(_without_userinfo(url)):
        return download_archive(url, downloads, timeout_s, min_bytes_per_s, max_expansion)
    raise DownloadError(f"source.url={redact_url(url)!r} is not a Kaggle, Google Drive, http(s) or ftp URL")


def download_google_drive(url: str, downloads: Path, timeout_s: float = DEFAULT_TIMEOUT_S,
                          max_expansion: float = DEFAULT_MAX_EXPANSION) -> Path:
    """A zip or tar archive shared on Google Drive, extracted into ``downloads/gdrive__<file id>``."""
    from opendatasets.utils.googledrive import download_file_from_google_drive

    match = GOOGLE_DRIVE_ID.search(url)
    if not match:
        raise DownloadError(f"source.url={redact_url(url)}: a Google Drive link must name a file "
                            "(drive.google.com/file/d/<id>/... or ...?id=<id>)")
    file_id = match.group(1) or match.group(2)

    def fill(staging: Path) -> None:
        download_file_from_google_drive(file_id, str(staging))
        _extract_archives(staging, max_expansion)

    return atomic_download(Path(downloads) / f"gdrive__{file_id}", fill, url, timeout_s)


def download_archive(url: str, downloads: Path, timeout_s: float = DEFAULT_TIMEOUT_S,
                     min_bytes_per_s: float = DEFAULT_MIN_BYTES_PER_S,
                     max_expansion: float = DEFAULT_MAX_EXPANSION) -> Path:
    """The zip or tar archive at ``url``, extracted into ``downloads/url__<name>-<hash of url>``."""

    def fill(staging: Path) -> None:
        _fetch_file(url, staging, timeout_s, min_bytes_per_s)
        _extract_archives(staging, max_expansion)

    return atomic_download(Path(downloads) / _url_folder(url), fill, url, timeout_s)


def _fetch_file(url: str, folder: Path, timeout_s: float, min_bytes_per_s: float = DEFAULT_MIN_BYTES_PER_S) -> Path:
    """Stream ``url`` into ``folder``, showing progress as bytes arrive; a short read is an error,
    not a file, and so is a trickle: less than ``min_bytes_per_s`` on average over any
    ``timeout_s`` (a server sending a byte now and then never trips the socket's timeout)."""
    shown = redact_url(url)
    parts, headers = urllib.parse.urlsplit(url), {"User-Agent": USER_AGENT}
    if "@" in parts.netloc:  # http://user:password@host/...: urllib would take it all for the host name
        user = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        url = _without_userinfo(url)
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        path = folder / _file_name(response.headers.get_filename() or urllib.parse.urlparse(response.url).path)
        total = response.length  # None when the server does not say
        progress = Progress(total, f"downloading {path.name}", unit="B", every_s=PROGRESS_EVERY_S)
        window_start, window_bytes = time.monotonic(), 0
        try:
            with open(path, "wb") as file:
                while chunk := response.read1(CHUNK_BYTES):
                    file.write(chunk)
                    progress.update(len(chunk))
                    window_bytes += len(chunk)
                    if time.monotonic() - window_start >= timeout_s:
                        if window_bytes < min_bytes_per_s * timeout_s:
                            raise DownloadError(
                                f"{shown}: {window_bytes:,} bytes in the last {timeout_s:g} s, slower than "
                                f"source.min_bytes_per_s={min_bytes_per_s:g} (over source.timeout_s)")
                        window_start, window_bytes = time.monotonic(), 0
        finally:
            progress.close()
    if total is not None and progress.done < total:
        raise DownloadError(f"{shown}: the connection closed after {progress.done:,} of {total:,} bytes")
    log.info("received %s: %s bytes", shown, f"{progress.done:,}")
    return path


def _without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def _file_name(name: str) -> str:
    name = re.sub(r"[^\w.-]+", "_", Path(urllib.parse.unquote(name).replace("\\", "/")).name).strip("._")
    return name or "download"


def _url_folder(url: str) -> str:
    """``url__<archive name without suffixes>-<8 hex of the URL>``: readable, and one per URL."""
    stem = _file_name(urllib.parse.urlparse(url).path)
    while stem.lower().endswith(ARCHIVE_SUFFIXES):
        stem = stem.rsplit(".", 1)[0]
    return f"url__{stem[:60] or 'download'}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def _extract_archives(folder: Path, max_expansion: float = DEFAULT_MAX_EXPANSION) -> None:
    """Extract each zip or tar archive in ``folder`` in place, and delete it; none is an error."""
    archives = [p for p in sorted(folder.iterdir()) if p.is_file() and (zipfile.is_zipfile(p) or tarfile.is_tarfile(p))]
    if not archives:
        raise DownloadError(f"the download holds no zip or tar archive ({[p.name for p in folder.iterdir()]})")
    for archive in archives:
        _check_expanded_size(archive, max_expansion)
        log.info("extracting %s", archive.name)
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as members:
                members.extractall(folder)  # drops absolute paths and ".." from member names
        else:
            if not hasattr(tarfile, "data_filter"):
                raise DownloadError("extracting tar archives safely needs Python >= 3.10.12 or 3.11.4")
            with tarfile.open(archive) as members:
                members.extractall(folder, filter="data")  # refuses links and paths leading outside
        archive.unlink()


def _check_expanded_size(archive: Path, max_expansion: float) -> None:
    """Refuse, before extracting, an archive that would fill the disk or expands suspiciously
    (a zip bomb): more than the free space, or more than ``max_expansion`` times its own size.
    A zip member never extracts to more than its declared size (zipfile stops there)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as members:
            expanded = sum(member.file_size for member in members.infolist())
    else:
        with tarfile.open(archive) as members:
            expanded = sum(member.size for member in members.getmembers())
    size, free = archive.stat().st_size, shutil.disk_usage(archive.parent).free
    if expanded > free:
        raise DownloadError(f"{archive.name} would expand to {expanded:,} bytes, more than the {free:,} bytes "
                            f"free in {archive.parent.parent}: make room, or put data/01_raw on a larger disk")
    if expanded > max_expansion * max(size, 1):
        raise DownloadError(f"{archive.name} ({size:,} bytes) would expand to {expanded:,} bytes, "
                            f"{expanded / max(size, 1):,.0f} times its size, more than "
                            f"source.max_expansion={max_expansion:g}: refused as a likely zip bomb (raise "
                            "source.max_expansion if you trust this archive)")


# --- torchvision -----------------------------------------------------------------------------


def download_torchvision(dataset: str, downloads: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download a torchvision dataset and write it out in the layout its contest used.

    ``CIFAR10``: ``train/<class>/<n>.png`` and ``test/<class>/<n>.png``.
    ``FashionMNIST``: the "identify the apparels" layout, ``train/train.csv`` (id,label) with
    ``train/train/<id>.png`` and ``test/test.csv`` with ``test/test/<id>.png``.
    """
    import torchvision

    if dataset not in EXPORTERS:
        raise DownloadError(f"source.dataset={dataset!r}: torchvision sources supported are {sorted(EXPORTERS)}")
    target = Path(downloads) / f"torchvision__{dataset}"
    dataset_class = getattr(torchvision.datasets, dataset)

    def fill(staging: Path) -> None:
        archive = staging / "_archive"
        splits = {train: dataset_class(root=str(archive), train=train, download=True) for train in (True, False)}
        EXPORTERS[dataset](splits[True], splits[False], staging)
        shutil.rmtree(archive, ignore_errors=True)

    return atomic_download(target, fill, f"torchvision {dataset}", timeout_s)


def _export_class_folders(train_set, test_set, out: Path) -> None:
    for subset, data in (("train", train_set), ("test", test_set)):
        for index, (image, label) in enumerate(data):
            folder = out / subset / data.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index}.png")


def _export_contest_csv(train_set, test_set, out: Path) -> None:
    next_id = 1
    for subset, data, labelled in (("train", train_set, True), ("test", test_set, False)):
        images = out / subset / subset
        images.mkdir(parents=True)
        rows = []
        for image, label in data:
            image.save(images / f"{next_id}.png")
            rows.append(f"{next_id},{label}" if labelled else f"{next_id}")
            next_id += 1
        header = "id,label" if labelled else "id"
        (out / subset / f"{subset}.csv").write_text("\n".join([header, *rows]) + "\n")


EXPORTERS = {"CIFAR10": _export_class_folders, "FashionMNIST": _export_contest_csv}
