"""Reading text from local paths or from URIs that pyarrow's filesystems understand."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from dsw_ray.errors import DataError


def is_uri(path: str) -> bool:
    return "://" in path


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        # A local path goes to the local filesystem directly: as a file:// URI one with a
        # space in it would not parse.
        filesystem, inner = pafs.LocalFileSystem(), os.path.abspath(path)
    else:
        filesystem, inner = pafs.FileSystem.from_uri(path)
    with filesystem.open_input_stream(inner) as stream:
        return stream.read()


def read_text(path: str, expected: str = "") -> str:
    """The whole file at a local path or a URI such as ``s3://bucket/x.jsonl``, decoded as
    UTF-8 (a leading byte-order mark is dropped). ``expected`` says what the file should be,
    for the error when it is missing."""
    shown = path if is_uri(path) else os.path.abspath(path)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise DataError(f"{shown}: no such file.{' ' + expected if expected else ''}") from None
    except IsADirectoryError:
        raise DataError(f"{shown} is a folder, not a file.{' ' + expected if expected else ''}") from None
    except ValueError as error:  # pyarrow: a URI it cannot parse or has no filesystem for
        raise DataError(f"{shown}: not a path or URI that can be read ({error}).") from error
    except OSError as error:
        if os.path.isdir(shown):
            raise DataError(f"{shown} is a folder, not a file.{' ' + expected if expected else ''}") from None
        raise DataError(f"{shown}: cannot be read ({error}).") from error
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{shown}, line {line}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
            "save the file as UTF-8."
        ) from None
