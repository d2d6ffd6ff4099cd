"""Reading text from local paths or from URIs that pyarrow's filesystems understand."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from dsw_ray.errors import DataError


def is_uri(path: str) -> bool:
    return "://" in path


def read_text(path: str) -> str:
    """The whole file at a local path or a URI such as ``s3://bucket/x.jsonl``."""
    if not is_uri(path):
        path = os.path.abspath(path)
    try:
        filesystem, inner = pafs.FileSystem.from_uri(path if is_uri(path) else "file://" + path)
        with filesystem.open_input_stream(inner) as stream:
            return stream.read().decode("utf-8")
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such file ({error}).") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as UTF-8 text ({error}).") from error
