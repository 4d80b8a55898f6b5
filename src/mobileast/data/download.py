"""Download the TAU Urban Acoustic Scenes 2022 Mobile development set, md5-verified.

`python -m mobileast.data.download DEST` fetches the archives of Zenodo record 6337421
(16 audio zips, meta, doc) one at a time: each is downloaded into `DEST/.download/`
(a broken transfer resumed with an HTTP range request, a stalled connection given up
after `--timeout` seconds), checked against its published md5 sum, unpacked into a
scratch folder and renamed into place, then marked done and deleted, so the disk holds
one archive beyond the dataset and an interrupted download resumes without fetching
finished archives again. It prints the dataset root to set as `data.root`. Network,
disk, checksum and archive errors are one line each (exit status 1). Never part of
`dvc repro`: the default pipeline downloads nothing.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from mobileast.data.tau22 import META_FILE
from mobileast.files import file_md5

URL = "https://zenodo.org/record/6337421/files/{name}?download=1"
PREFIX = "TAU-urban-acoustic-scenes-2022-mobile-development"
ARCHIVES = {  # archive name -> md5, as listed on the Zenodo record
    f"{PREFIX}.audio.1.zip": "8be14bdbd844481dce059ab31fbd2239",
    f"{PREFIX}.audio.2.zip": "e821abda49b069248bb75eab39df7575",
    f"{PREFIX}.audio.3.zip": "9c7897f78bb42ca0008936daddf3f8f3",
    f"{PREFIX}.audio.4.zip": "53ec3e37c0fc0be75f53c5abbc5300b8",
    f"{PREFIX}.audio.5.zip": "528422c33c5d10263203d2c61cb1f3be",
    f"{PREFIX}.audio.6.zip": "4759a9465c903e13e57d5e82e791fc28",
    f"{PREFIX}.audio.7.zip": "6d545fc83a55a17856a9ccc1ac9aff6b",
    f"{PREFIX}.audio.8.zip": "3a2916a9b5d3f43cc7a22a62b180b0d9",
    f"{PREFIX}.audio.9.zip": "071f664c86639ad730f7be4e3c39d886",
    f"{PREFIX}.audio.10.zip": "e0839d019e9b77ecbcbb0eff85965530",
    f"{PREFIX}.audio.11.zip": "fc60f1c83726be3963ae14fbcb95eeb4",
    f"{PREFIX}.audio.12.zip": "02246547f86c0a814dc63ec65d7033bb",
    f"{PREFIX}.audio.13.zip": "88ae9ef884665140d1572d8061725e00",
    f"{PREFIX}.audio.14.zip": "c3f400d74ae90e5190dc518cde43de47",
    f"{PREFIX}.audio.15.zip": "85594c6fe4f91c10aa2a410f748103b8",
    f"{PREFIX}.audio.16.zip": "6e2df8438c69f6789414aeba8cbad9d8",
    f"{PREFIX}.doc.zip": "9c4f610bdb5d3e3e72a17d393a26452a",
    f"{PREFIX}.meta.zip": "419b6ff6570f1030730352dc80cd8d15",
}
CHUNK = 1 << 20
TIMEOUT_S = 60.0  # a connection that sends nothing for this long is given up (run again to resume)
SCRATCH = ".download"  # inside DEST: partial and verified archives, unpack folders, done markers


class DownloadError(RuntimeError):
    """A download that cannot go on; its message is one line naming the archive and the problem."""


class ChecksumError(DownloadError):
    """A downloaded archive does not match its published md5 sum."""


class ArchiveError(DownloadError):
    """An archive with a member that would land outside the destination."""


def fetch(url: str, part: Path, md5: str, timeout: float = TIMEOUT_S) -> None:
    """Download url into `part`, resuming what a broken transfer left there (an HTTP range
    request; a server that ignores it sends the whole file again), and verify its md5.

    A wrong checksum deletes `part` and raises ChecksumError. `timeout`: seconds without
    data before the transfer is given up (TimeoutError), `part` kept for the next try.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: nothing after `offset`, the transfer was complete
            raise
    else:
        with response:
            resumed = response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
            with open(part, "ab" if resumed else "wb") as out:
                while chunk := response.read1(CHUNK):  # what has arrived: a stalled transfer keeps it
                    out.write(chunk)
    if (actual := file_md5(part)) != md5:
        part.unlink()
        raise ChecksumError(f"md5 {actual}, expected {md5}; the download is deleted, run again to fetch it anew")


def unpack(archive: Path, scratch: Path, dest: Path) -> None:
    """Unpack `archive` into the empty folder `scratch`, then move its files into `dest` (each
    file renamed into place, replacing one an interrupted earlier unpack left).

    A member whose path would leave `scratch` (`../evil`, an absolute path) refuses the whole
    archive with ArchiveError before anything is written.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.namelist():
            if not (scratch / member).resolve().is_relative_to(scratch.resolve()):
                raise ArchiveError(f"member {member!r} would be written outside {dest}; the archive is refused")
        zipped.extractall(scratch)
    for path in sorted(scratch.rglob("*")):
        if path.is_file():
            target = dest / path.relative_to(scratch)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
    shutil.rmtree(scratch)


def install(name: str, md5: str, url: str, dest: Path, keep_archives: bool, timeout: float) -> None:
    """One archive: fetched (resumed) and verified into `DEST/.download/<name>.part`, renamed
    `<name>` once verified, unpacked through a scratch folder, then marked done."""
    work = dest / SCRATCH
    work.mkdir(parents=True, exist_ok=True)
    archive = work / name
    if not archive.exists():
        part = work / f"{name}.part"
        print(f"{name}: fetching" + (f" (resuming after {part.stat().st_size} bytes)" if part.exists() else ""),
              flush=True)
        fetch(url.format(name=name), part, md5, timeout)
        part.replace(archive)
    print(f"{name}: verified, unpacking", flush=True)
    unpack(archive, work / f"{name}.unpack", dest)
    (work / f"{name}.done").touch()
    if keep_archives:
        archive.replace(dest / name)
    else:
        archive.unlink()


def describe(error: BaseException, url: str, timeout: float) -> str:
    """One line for an error of fetching `url`, writing to disk or unpacking."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason} from {url}"
    if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
        return f"no data from {url} for {timeout:g} s; run again to resume"
    if isinstance(error, urllib.error.URLError):
        return f"cannot reach {url} ({error.reason})"
    if isinstance(error, zipfile.BadZipFile):
        return f"not a readable zip archive ({error})"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}" + (f": {error.filename}" if error.filename else "")
    return str(error) or type(error).__name__


def download(dest: Path, url: str = URL, keep_archives: bool = False, timeout: float = TIMEOUT_S) -> Path:
    """Fetch, verify and unpack every archive into dest, one at a time; return the dataset root
    (holding meta.csv). Archives marked done are skipped, so an interrupted download resumes
    where it stopped. Any failure is a DownloadError naming the archive."""
    for name, md5 in ARCHIVES.items():
        if (dest / SCRATCH / f"{name}.done").exists():
            print(f"{name}: already unpacked", flush=True)
            continue
        try:
            install(name, md5, url, dest, keep_archives, timeout)
        except DownloadError as error:
            raise type(error)(f"{name}: {error}") from error
        except (OSError, zipfile.BadZipFile) as error:
            raise DownloadError(f"{name}: {describe(error, url.format(name=name), timeout)}") from error
    for root in (dest, *sorted(path for path in dest.iterdir() if path.is_dir() and path.name != SCRATCH)):
        if (root / META_FILE).is_file():
            return root
    raise DownloadError(f"{dest}: no {META_FILE} in the unpacked archives")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast download", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download the TAU Urban Acoustic Scenes 2022 Mobile development set (Zenodo record\n"
                    "6337421), check every archive against its published md5 sum, unpack it into DEST and\n"
                    "print the dataset root to set as data.root. Archives already present and verified are\n"
                    "not fetched again, so an interrupted download resumes archive by archive.",
        epilog="example:\n"
               "  python -m mobileast download /datasets/tau22")
    parser.add_argument("dest", type=Path, help="directory to download and unpack into")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zip files after unpacking")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help=f"seconds without data before a connection is given up (default {TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    try:
        root = download(args.dest, URL, keep_archives=args.keep_archives, timeout=args.timeout)
    except DownloadError as error:
        print(f"download: {error}", file=sys.stderr)
        return 1
    print(f"done. In params.yaml set data.source: tau22 and data.root: {root.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
