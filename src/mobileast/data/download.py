"""Download the TAU Urban Acoustic Scenes 2022 Mobile development set, md5-verified.

`python -m mobileast.data.download DEST` fetches the archives of Zenodo record 6337421
(16 audio zips, meta, doc), checks each against its published md5 sum, unpacks them into
DEST and prints the dataset root to set as `data.root`. Archives already present with the
right checksum are not fetched again, so an interrupted download resumes archive by
archive. Never part of `dvc repro`: the default pipeline downloads nothing.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

from mobileast.data.tau22 import META_FILE
from mobileast.files import file_md5 as md5sum

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


class ChecksumError(RuntimeError):
    """A downloaded archive does not match its published md5 sum."""


def fetch(url: str, path: Path, md5: str) -> None:
    """Download url to path unless a file with the right md5 is there; verify the download.

    The download goes to `<path>.part` first, so a broken transfer never looks complete;
    a wrong checksum deletes it and raises ChecksumError.
    """
    if path.exists() and md5sum(path) == md5:
        return
    part = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url) as response, open(part, "wb") as out:
        shutil.copyfileobj(response, out, CHUNK)
    if (actual := md5sum(part)) != md5:
        part.unlink()
        raise ChecksumError(f"{path.name}: md5 {actual}, expected {md5}; download it again")
    part.replace(path)


def download(dest: Path, url: str = URL, keep_archives: bool = False) -> Path:
    """Fetch, verify and unpack every archive into dest; return the dataset root (holding meta.csv)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in ARCHIVES.items():
        print(f"{name}: fetching and verifying", flush=True)
        fetch(url.format(name=name), dest / name, md5)
    for name in ARCHIVES:
        with zipfile.ZipFile(dest / name) as archive:
            archive.extractall(dest)
        if not keep_archives:
            (dest / name).unlink()
    for root in (dest, *sorted(path for path in dest.iterdir() if path.is_dir())):
        if (root / META_FILE).is_file():
            return root
    raise FileNotFoundError(f"{dest}: no {META_FILE} in the unpacked archives")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobileast download", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="directory to download and unpack into")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zip files after unpacking")
    args = parser.parse_args(argv)
    try:
        root = download(args.dest, keep_archives=args.keep_archives)
    except ChecksumError as error:
        print(f"download: {error}", file=sys.stderr)
        return 1
    print(f"done. In params.yaml set data.source: tau22 and data.root: {root.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
