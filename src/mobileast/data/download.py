"""Download the TAU Urban Acoustic Scenes 2022 Mobile development set, or the MicIRP
microphone impulse responses, md5-verified.

`python -m mobileast.data.download DEST` fetches the archives of Zenodo record 6337421
(16 audio zips, meta, doc) one at a time: each is downloaded into `DEST/.download/`
(a broken transfer resumed with an HTTP range request, a stalled connection given up
after `--timeout` seconds), checked against its published md5 sum, unpacked into a
scratch folder and renamed into place, then marked done and deleted, so the disk holds
one archive beyond the dataset and an interrupted download resumes without fetching
finished archives again. It prints the dataset root to set as `data.root`.

`--micirp DEST` fetches the 66 device impulse responses of the Microphone Impulse Response
Project (micirp.blogspot.com, Xaudia; Creative Commons) in the selection CP-JKU used for
their DCASE 2023 Task 1 system (cpjku_dcase23, datasets/dirs), file by file from that
repository at a fixed commit, each checked against the md5 of that commit's file, for
params `augment.dir.ir_dir` (docs/models.md). MicIRP itself publishes no archive or checksums.

Network, disk, checksum and archive errors are one line each (exit status 1). Never part
of `dvc repro`: the default pipeline downloads nothing.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

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
# The MicIRP impulse responses as CP-JKU's cpjku_dcase23 repository holds them (datasets/dirs at
# this commit; file name -> md5 of the file at that commit).
MICIRP_URL = ("https://raw.githubusercontent.com/fschmid56/cpjku_dcase23/"
              "2e20abaa64264f227c50696e5a43d4c706543ff4/datasets/dirs/{name}")
MICIRP_FILES = {
    "Altec_639.wav": "bc525aa0365ace9a85327618b14af4c4",
    "Altec_670A.wav": "550c874e8493591794a23f3d11249c76",
    "Altec_670B.wav": "1e9a2e829e5890eaee3c857c3fac0392",
    "American_R331.wav": "eb4118e8e618b960f52e263acd434321",
    "Amperite_RA.wav": "806062a12288836fe49f9391d54ca88e",
    "B&O_BM2.wav": "2a7bf48030a1f267bb01c4a0edc96168",
    "B&O_BM6.wav": "22a429693867f9be12958b6cc8805e3c",
    "BBCmarconi_B.wav": "9397daa3eb88f6b89da8174aa1df2f85",
    "Beomic_1000.wav": "110f3abce17ca4f17672fa8d550658f7",
    "Beyer_M260.wav": "2b1912804396335f566b5e2a089d71a8",
    "Beyer_M360.wav": "79af2db24379c4fa077b46afda2a4c43",
    "Coles_4038.wav": "1b35343d9881832f06f4a99c35b86b1e",
    "Doremi_.wav": "a943e61e1c30b95cbea5deb24414f320",
    "EMI_ribbon.wav": "d306cfb11c2965173173670b8339bcc3",
    "EV_RE20_Flat.wav": "38fdbc3e4b735df4386f5966f517c776",
    "EV_RE20_HPF.wav": "a33bb1b38808b3a16533e866770b1a2d",
    "FilmIndustries_M8.wav": "25d123aa5e406edd40cb4289fec80e01",
    "GEC_2373.wav": "e1bd36ce7f1151c567fe2af4b6e28686",
    "GEC_bigdynamic.wav": "e9a840ef8f3ee2be070b47c4f5ada53b",
    "Grampian_GR2.wav": "dc29b0ae7b87373125bbf698709ffdd5",
    "IR_AKGD12.wav": "b363313ca2ef71c0e7fa17ce3e8728c1",
    "IR_AKG_FaultyD12.wav": "3bfc1cd1e136730eaa6c94759cbf4357",
    "IR_Astatic77.wav": "30d3f632206dd3ee9120319110ff562c",
    "IR_BeyerM500Stock.wav": "c8786013738ddff0e8e3a9256e8dea29",
    "IR_FosterDynamicDF1.wav": "930e7e7560c845ead9ca591229e46048",
    "IR_GaumontKalee.wav": "47fecfdfcb51963c6ff15af6ae9480eb",
    "IR_Lomo52A5M.wav": "82f42c3a81976b5e43096e9bbbea4e67",
    "IR_Meazzi.wav": "3c5970a3ea12e1329b804ac3858b8117",
    "IR_MelodiumRM6.wav": "f18b43dc3977046a62a70e41dc9cae6f",
    "IR_OktavaMD57.wav": "80b1120afbbeb0266b1ce03206931a3d",
    "IR_OktavaMK18Silver.wav": "b160c7c6c2abab10512ee5224b12e7f1",
    "IR_OktavaMK18_Overload.wav": "34caeddb2a7b1093f031609717fa0c6f",
    "IR_OktavaML16.wav": "483f43cf9005736c61265b195e84c8ef",
    "IR_RCAKU3a.wav": "8bf3efe448ba29861ee1f8fc1f4c6717",
    "IR_ResloCR600.wav": "244ab34634c69a730731c30162240400",
    "IR_ResloDynamic.wav": "5a9a724bb5dc1d44ed8414fa05aef238",
    "IR_ResloURA.wav": "556fe669f8893e16344dd58611eccb73",
    "IR_STC4033_Cardioid.wav": "953e64714c357477e450b5f2f2673732",
    "IR_STC4033_Pressure.wav": "b20b4a3d5ec516862c05d3c67644a00d",
    "IR_STC4033_Ribbon.wav": "8f044f04893b1eddba15556170e1ae61",
    "IR_STC4035.wav": "5116ec5c1982d08dd4666d63b95e47ee",
    "IR_Shure510C.wav": "c1770b0c91a96d279cfa3434e286ebb0",
    "Melodium_42B_1.wav": "6a7ecd4fefd9fc13b4904bab7190c07d",
    "Melodium_Model12.wav": "a83c03057c75a630a4f12c317b267ffc",
    "Oktava_ML19.wav": "d4cf571ae5cf2924aab0e049b6a5828f",
    "RCA_44BX_1.wav": "68686ca5fa17bec693d2b6ce97bb9d12",
    "RCA_44BX_2.wav": "a901612441ed97423897815beb48f9e6",
    "RCA_74B.wav": "3afad8a43c6066072e50171b3c789fac",
    "RCA_77DX_1.wav": "8559147688158f8cda2755a9508c3fda",
    "RCA_77DX_2.wav": "3a9bef89f50736876fdf492bb70ea822",
    "RCA_KU3a_1.wav": "e1dd5314e4b0032e982fe5644f03ce0b",
    "RCA_PB90.wav": "b7d736cdbf32d5ad752f98604707db1e",
    "RCA_varacoustic_fig8.wav": "905b634fb1abe1d94054e4acb7f48e14",
    "Reslo_RB250.wav": "7ff3e3f56d1d4208af29f97c74b2c801",
    "Reslo_RB_RedLabel.wav": "799c43b5d5f0f7b5a29b8af872830cc5",
    "Reslo_RV.wav": "3c3444e307940786e0a42ff364b8bf77",
    "Reslo_SR1.wav": "f4ac484af6f009c849e58cc3231be6e0",
    "Reslo_VMC2.wav": "e15c0d3c84da62231f979f3b74dc51ab",
    "Shure315_HPF.wav": "ac6a65120324a57ee636777596ef957f",
    "Shure315_flat.wav": "4a71509a1c3ee52667ce4ccc6762cca4",
    "Sony_C37Fet.wav": "a27756922714211a54f1d3746ea800c5",
    "Telefunken_M201.wav": "c13cd5b2ac7754c10a41732f4e9b6481",
    "Toshiba_BK5.wav": "c272fa316d977fbf833a36e7a2f7bde3",
    "Toshiba_TypeG.wav": "77c5bc8df3ce4b003c9aa08ed3a7fc33",
    "Toshiba_TypeK_HPF.wav": "51f720b89e5cb6270414fc748366d724",
    "Toshiba_TypeK_flat.wav": "763755e386ca3c9b72727d304efb4342",
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


@contextmanager
def failures(name: str, url: str, timeout: float) -> Iterator[None]:
    """Re-raise an error of fetching, writing or unpacking `name` (from `url`) as a one-line
    DownloadError naming it."""
    try:
        yield
    except DownloadError as error:
        raise type(error)(f"{name}: {error}") from error
    except (OSError, zipfile.BadZipFile) as error:
        raise DownloadError(f"{name}: {describe(error, url, timeout)}") from error


def download(dest: Path, url: str = URL, keep_archives: bool = False, timeout: float = TIMEOUT_S) -> Path:
    """Fetch, verify and unpack every archive into dest, one at a time; return the dataset root
    (holding meta.csv). Archives marked done are skipped, so an interrupted download resumes
    where it stopped. Any failure is a DownloadError naming the archive."""
    for name, md5 in ARCHIVES.items():
        if (dest / SCRATCH / f"{name}.done").exists():
            print(f"{name}: already unpacked", flush=True)
            continue
        with failures(name, url.format(name=name), timeout):
            install(name, md5, url, dest, keep_archives, timeout)
    for root in (dest, *sorted(path for path in dest.iterdir() if path.is_dir() and path.name != SCRATCH)):
        if (root / META_FILE).is_file():
            return root
    raise DownloadError(f"{dest}: no {META_FILE} in the unpacked archives")


def download_files(dest: Path, files: Mapping[str, str], url: str, timeout: float = TIMEOUT_S) -> Path:
    """Fetch each of `files` (name -> md5) from `url` (its {name} URL-quoted) into dest, one at a
    time through `dest/.download/<name>.part` (resumed after a broken transfer), verified, then
    renamed into place; a file already in dest with its md5 is not fetched again. The scratch
    folder is removed at the end, leaving only the files. Returns dest; any failure is a
    DownloadError naming the file."""
    work = dest / SCRATCH
    for name, md5 in files.items():
        target = dest / name
        if target.is_file() and file_md5(target) == md5:
            print(f"{name}: already there", flush=True)
            continue
        source = url.format(name=urllib.parse.quote(name))
        with failures(name, source, timeout):
            work.mkdir(parents=True, exist_ok=True)
            fetch(source, work / f"{name}.part", md5, timeout)
            (work / f"{name}.part").replace(target)
        print(f"{name}: verified", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobileast download", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download the TAU Urban Acoustic Scenes 2022 Mobile development set (Zenodo record\n"
                    "6337421), check every archive against its published md5 sum, unpack it into DEST and\n"
                    "print the dataset root to set as data.root. Archives already present and verified are\n"
                    "not fetched again, so an interrupted download resumes archive by archive.\n\n"
                    "With --micirp: download the 66 MicIRP microphone impulse responses (CP-JKU's DCASE 2023\n"
                    "selection, md5-checked) into DEST instead, for augment.dir.ir_dir.",
        epilog="examples:\n"
               "  python -m mobileast download /datasets/tau22\n"
               "  python -m mobileast download --micirp data/irs")
    parser.add_argument("dest", type=Path, help="directory to download (and unpack) into")
    parser.add_argument("--micirp", action="store_true",
                        help="download the MicIRP device impulse responses instead of TAU22")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zip files after unpacking (TAU22)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help=f"seconds without data before a connection is given up (default {TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    try:
        if args.micirp:
            folder = download_files(args.dest, MICIRP_FILES, MICIRP_URL, args.timeout)
            settings = f"augment.dir.enabled: true and augment.dir.ir_dir: {folder} (likewise teacher.augment.dir)"
        else:
            root = download(args.dest, URL, keep_archives=args.keep_archives, timeout=args.timeout)
            settings = f"data.source: tau22 and data.root: {root.resolve()}"
    except DownloadError as error:
        print(f"download: {error}", file=sys.stderr)
        return 1
    print(f"done. In params.yaml set {settings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
