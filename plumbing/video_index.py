"""Finding the listed videos in a dataset folder as its users downloaded it, and checking a list before anything heavy.

data.py reads list files (`relative/path label`); this module finds each path under a root in whatever layout the
download has (the authors' flat layout, HMDB-51 or UCF-101 class folders, Kinetics mirrors), through a cached index of
the root, and refuses in one line a list whose videos are mostly not there (preflight). Not the paper's method.
"""
import hashlib
import json
import logging
import os

from data import DatasetError
from plumbing.atomic_files import atomic_write

log = logging.getLogger("data")


#
# A list names `relative/path label`. The video is ROOT/relative/path when the download has the authors' layout;
# otherwise it is found by its file name in any folder under ROOT (HMDB-51 extracted as one folder per class,
# UCF-101 as UCF-101/<Class>/v_*.avi, Kinetics as train/<class>/<youtube_id>_<start>_<end>.mp4), so nobody has to
# move or rename files. That second lookup uses an index of ROOT, built once and cached:
#   where    $VIFI_CACHE/video-index/<sha256 of ROOT's real path, 16 hex>.json (default ~/.cache/vifi-clip), never
#            inside ROOT: a dataset folder may be read-only or shared, and a file written there would change the
#            very folder time the index is checked against.
#   what     every folder under ROOT (hidden entries skipped, folder links followed once) with its modification time
#            and the names of its files.
#   valid    while every indexed folder still has the modification time recorded (a file added, removed or renamed
#            anywhere changes its folder's time; a new folder changes its parent's): one stat per folder (about 800
#            for Kinetics-400 in class folders), no walk. Otherwise the index is rebuilt. A name missing from a valid
#            index is missing on disk, so a few missing videos do not make every run walk the dataset again.
# A file name found in two places is an error naming both, unless the listed folder picks one (a list naming
# val/x.mp4, with train/a/x.mp4 and val/a/x.mp4 on disk, takes the second).

MAX_MISSING = 0.01  # preflight: at most 1% of a list may be missing (warned; they count as unreadable videos)
INDEX_VERSION = 1

# The authors' list folders (splits/datasets_splits/<folder>/, also under base2novel_splits/) -> the dataset and its
# layout as distributed, for preflight's message.
LAYOUTS = {
    "hmdb_splits": ("HMDB", "HMDB-51 class folders as extracted: ROOT/<class>/<file>.avi"),
    "ucf_splits": ("UCF", "UCF-101 as extracted: ROOT/UCF-101/<Class>/v_<Class>_gNN_cNN.avi"),
    "ssv2_splits": ("SSv2", "Something-Something v2 as extracted: ROOT/<id>.webm"),
    "k400_splits": ("Kinetics-400", "Kinetics as downloaded: ROOT/train|val/<file>.mp4, or in class folders "
                                    "ROOT/train|val/<class>/<youtube_id>_<start>_<end>.mp4"),
    "k600_splits": ("Kinetics-600", "Kinetics as downloaded: ROOT/train|val|test/<file>.mp4, or in class folders "
                                    "ROOT/train|val|test/<class>/<youtube_id>_<start>_<end>.mp4"),
}


def cache_dir():
    """$VIFI_CACHE, default ~/.cache/vifi-clip (shared with miniworld.py)."""
    return os.path.expanduser(os.environ.get("VIFI_CACHE", os.path.join("~", ".cache", "vifi-clip")))


def index_path(root):
    """Where the index of `root` is cached."""
    key = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(cache_dir(), "video-index", f"{key}.json")


def _is_file(entry):
    try:
        return entry.is_file()  # follows links
    except OSError:
        return False


def _walk(root):
    """{relative folder ('' for root): [mtime_ns, [file names]]} of every folder under root."""
    folders, seen, stack = {}, set(), [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            st = os.stat(full)
            entries = list(os.scandir(full))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:  # a folder link seen before (or a cycle)
            continue
        seen.add((st.st_dev, st.st_ino))
        names = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    stack.append(f"{rel}/{e.name}" if rel else e.name)
                elif e.is_file():
                    names.append(e.name)
            except OSError:
                pass
        folders[rel] = [st.st_mtime_ns, sorted(names)]
    return folders


def _index_valid(root, folders):
    for rel, (mtime, _) in folders.items():
        try:
            if os.stat(os.path.join(root, rel) if rel else root).st_mtime_ns != mtime:
                return False
        except OSError:
            return False
    return True


def video_index(root, rebuild=False):
    """{file name: [paths relative to root]} of every file under root, from the cached index (see above) while it is
    valid, else from a fresh walk, which is then cached (a cache folder that cannot be written only costs the walk
    next time)."""
    path, real = index_path(root), os.path.realpath(root)
    folders = None
    if not rebuild:
        try:
            with open(path, encoding="utf-8") as f:
                cached = json.load(f)
            if cached.get("version") == INDEX_VERSION and cached.get("root") == real \
                    and _index_valid(root, cached["folders"]):
                folders = cached["folders"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if folders is None:
        folders = _walk(root)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # several processes (torchrun ranks) may write it at once: each write is whole, under its own temporary name
            with atomic_write(path, "w", encoding="utf-8") as f:
                json.dump(dict(version=INDEX_VERSION, root=real, folders=folders), f)
        except OSError as e:
            log.warning("cannot cache the index of %s at %s: %s", root, path, e)
    by_name = {}
    for rel, (_, names) in folders.items():
        for name in names:
            by_name.setdefault(name, []).append(f"{rel}/{name}" if rel else name)
    return by_name


def locate(root, paths):
    """For each listed path, the path relative to root where the video is, or None."""
    listings = {}

    def listed_file(rel):  # one scandir per listed folder instead of one stat per video
        folder, name = os.path.split(rel)
        if folder not in listings:
            try:
                listings[folder] = {e.name for e in os.scandir(os.path.join(root, folder)) if _is_file(e)}
            except OSError:
                listings[folder] = set()
        return name in listings[folder]

    found = [p if listed_file(p) else None for p in paths]
    if all(f is not None for f in found):
        return found
    by_name = video_index(root)
    for i, p in enumerate(paths):
        if found[i] is not None:
            continue
        candidates = by_name.get(os.path.basename(p), [])
        folder = os.path.dirname(p)
        if len(candidates) > 1 and folder:
            candidates = [c for c in candidates if c.startswith(folder + "/")] or candidates
        if len(candidates) > 1:
            more = f" (and {len(candidates) - 2} more)" if len(candidates) > 2 else ""
            raise DatasetError(f"{root}: the listed video {p} is found twice, as {candidates[0]} and "
                               f"{candidates[1]}{more}; remove or move one of them")
        if candidates:
            found[i] = candidates[0]
    return found


def resolve(root, samples):
    """(samples, missing): every sample in order, its path replaced by where the video is under root (the listed
    path, else the file found by name in any folder, through the cached index); missing lists the listed paths of
    the videos not found, which keep their listed path (they then count as unreadable, as any bad video)."""
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: no such folder")
    found = locate(root, [p for p, _ in samples])
    resolved = [(f if f is not None else p, *rest) for (p, *rest), f in zip(samples, found)]
    return resolved, [p for (p, _), f in zip(samples, found) if f is None]


def layout_of(source):
    """(dataset, layout as distributed) for a list file of the authors' folders, else ("", "")."""
    parts = os.path.normpath(str(source)).split(os.sep)
    return LAYOUTS.get(parts[-2], ("", "")) if len(parts) >= 2 else ("", "")


def preflight(root, samples, source="", max_missing=MAX_MISSING):
    """Check a list against root before anything heavy: a directory lookup through the index, no decoding.

    Returns resolve(root, samples). More than max_missing of the list not found raises DatasetError with one line:
    how many of how many, three examples, and the layout expected (source: the list file, named in the message; its
    folder among the authors' picks the dataset's layout). Fewer are logged and count as unreadable videos."""
    samples, missing = resolve(root, samples)
    if missing:
        dataset, layout = layout_of(source)
        folder = os.path.dirname(missing[0])
        line = (f"{dataset + ': ' if dataset else ''}{len(missing)} of {len(samples)} videos"
                f"{' in ' + os.path.basename(str(source)) if source else ''} not found under {root}: "
                f"e.g. {', '.join(missing[:3])}; expected ROOT/{folder + '/' if folder else ''}<file> or "
                f"ROOT/<any folder>/<file>{f' ({layout})' if layout else ''}")
        if len(missing) > max_missing * len(samples):
            raise DatasetError(line)
        log.warning("%s; at most %g%% may be missing: they count as unreadable videos", line, 100 * max_missing)
    return samples, missing
