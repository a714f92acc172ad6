"""Video sources of a many-camera run: what the user names (files, directories, list files, camera
indices, URLs) resolved into streams with safe, unique names, and opened one by one.

A source string is, in this order: an existing directory (every video file directly inside it, in
name order), an existing list file (``.txt``, ``.lst`` or ``.list``: one source a line, ``#``
starts a comment, relative paths are relative to the list file), an existing file (a video), a
string of digits (a camera index), a URL (``rtsp://``, ``http://``, any ``scheme://``, passed to
OpenCV as it is), or else a video file that does not exist (its stream fails when it is opened).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from . import video
from .video import VideoInfo

VIDEO_SUFFIXES = frozenset(
    (".avi", ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp", ".mjpeg")
)
LIST_SUFFIXES = frozenset((".txt", ".lst", ".list"))
# Names a stream's directory must not take: the run's own files beside it.
_RESERVED = frozenset(("summary.json", "report.png"))
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 64


@dataclass(frozen=True)
class Source:
    """One stream.

    Attributes:
        name: the stream's name, safe as a directory name and unique in its run.
        target: what OpenCV opens: a file path, a URL or a camera index; or an iterable of
            ``(H, W, 3)`` uint8 BGR frames (iterated once per attempt: give a re-iterable one,
            e.g. :class:`zeroskip.synthetic.SyntheticClip`, where a stream may be re-run).
        text: the source as the user gave it, for messages and the summary.
    """

    name: str
    target: str | int | Iterable[np.ndarray]
    text: str

    def open(self) -> tuple[Iterator[np.ndarray], VideoInfo | None]:
        """The stream's frames and what its container says about them (``None`` for an iterable).

        Raises:
            ValueError: the source cannot be opened or has no decodable frame.
        """
        if isinstance(self.target, int):
            return video.open_capture(self.target, self.text, "source")
        if isinstance(self.target, str):
            if "://" in self.target:
                return video.open_capture(self.target, self.text, "source")
            return video.open_video(self.target)
        return iter(self.target), None


def safe_name(text: str) -> str:
    """A directory name made of ``text``'s letters, digits, ``.``, ``_`` and ``-`` (never hidden,
    never empty, at most 64 characters)."""
    name = _UNSAFE.sub("_", text).strip("._") or "stream"
    return name[:_MAX_NAME]


def _base_name(target: str | int) -> str:
    if isinstance(target, int):
        return f"camera-{target}"
    if "://" in target:
        parts = urlsplit(target)
        return f"{parts.hostname or parts.scheme}{parts.path}"
    return Path(target).stem


def unique_names(bases: Sequence[str]) -> list[str]:
    """:func:`safe_name` of every base, with ``-2``, ``-3``... appended to repeats (compared without
    case, for case-insensitive file systems), and never one of the run's own file names."""
    taken = set(_RESERVED)
    names = []
    for base in bases:
        stem = safe_name(base)
        name, count = stem, 1
        while name.lower() in taken:
            count += 1
            name = f"{stem[: _MAX_NAME - 1 - len(str(count))]}-{count}"
        taken.add(name.lower())
        names.append(name)
    return names


def _expand(text: str, inside_list: bool) -> list[str | int]:
    """The OpenCV targets one source string stands for."""
    path = Path(text)
    if path.is_dir():
        try:
            entries = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        except OSError as error:
            raise ValueError(f"`sources` must be readable, got directory {text!r} ({error.strerror})") from None
        if not entries:
            suffixes = ", ".join(sorted(VIDEO_SUFFIXES))
            raise ValueError(
                f"`sources` must be videos or directories of videos, got {text!r} (a directory) without a video"
                f" file ({suffixes})"
            )
        return [str(p) for p in entries]
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        if inside_list:
            raise ValueError(f"`sources` list files must list videos, directories or URLs, got list file {text!r}")
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not text"
            raise ValueError(f"`sources` list file must be readable text, got {text!r} ({reason})") from None
        targets: list[str | int] = []
        for line in lines:
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            if "://" not in entry and not entry.isdigit() and not os.path.isabs(entry):
                entry = str(path.parent / entry)
            targets.extend(_expand(entry, inside_list=True))
        if not targets:
            raise ValueError(f"`sources` list file must name at least one source, got {text!r} (none listed)")
        return targets
    if not path.exists() and text.isdigit():
        return [int(text)]
    return [text]


def resolve(specs: Sequence[str | os.PathLike | int]) -> list[Source]:
    """The streams that ``specs`` name (see the module's description), in order, with unique names.

    Raises:
        ValueError: no source, an empty directory or list file, a list file inside a list file.
        TypeError: a spec that is not a string, a path or an int.
    """
    if isinstance(specs, (str, os.PathLike)) or not isinstance(specs, Sequence) or not specs:
        raise ValueError(f"`sources` must be a non-empty list of sources, got {specs!r}")
    targets: list[tuple[str | int, str]] = []
    for spec in specs:
        if isinstance(spec, bool) or not isinstance(spec, (str, os.PathLike, int)):
            raise TypeError(f"`sources` must hold paths, URLs or camera indices, got {type(spec).__name__}")
        if isinstance(spec, int):
            targets.append((spec, str(spec)))
            continue
        text = os.fspath(spec)
        targets.extend((target, str(target)) for target in _expand(text, inside_list=False))
    names = unique_names([_base_name(target) for target, _ in targets])
    return [Source(name, target, text) for name, (target, text) in zip(names, targets)]
