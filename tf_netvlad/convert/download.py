"""The tf_netvlad download cache: where published weights are kept, checked downloads, models by URI.

Published files and their converted models live in the Keras cache folder (`$KERAS_HOME/tf_netvlad/`,
default `~/.keras/tf_netvlad/`): `NAME.mat` or `NAME.pth.tar` and `NAME.keras` for a table entry
of `tf_netvlad.convert.pretrained`. Downloads go through `keras.utils.get_file` and its progress
bar; a publisher's file is checked against the size and hash the publisher gives.

A download is written to a hidden `.part` file and renamed only once it is complete and its
checks passed, so a cut connection, a hash mismatch or Ctrl-C leaves nothing in the cache.

`fetch_model_uri` fetches the `.keras` file a `--model` URI names: `https://…/model.keras` once
into `<cache>/remote/`, `hf://OWNER/REPO/FILE.keras` and
`kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]/FILE.keras` by `huggingface_hub` /
`kagglehub` into their own caches.

Importing this module does not import TensorFlow or Keras; downloading does.
"""

import contextlib
import hashlib
import importlib
import os
import re
import urllib.parse
import zipfile

from tf_netvlad.data import fileio

CACHE_SUBDIR = "tf_netvlad"


# --------------------------------------------------------------------------- cache


def keras_home():
    """The Keras cache folder as Keras picks it: `$KERAS_HOME`, else `~/.keras` (`/tmp/.keras`
    when that exists but is not writable). Read at call time, so a changed `KERAS_HOME` counts."""
    base = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    if os.path.exists(base) and not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return base


def cache_dir():
    """`<Keras cache>/tf_netvlad`: downloads and converted models."""
    return os.path.join(keras_home(), CACHE_SUBDIR)


def cached_download_path(entry):
    """Where the publisher's file of `entry` is kept: `<cache>/NAME.mat` or `NAME.pth.tar`."""
    return os.path.join(cache_dir(), entry.name + entry.suffix)


def cached_model_path(entry):
    """Where the converted model of `entry` is kept: `<cache>/NAME.keras`."""
    return os.path.join(cache_dir(), entry.name + ".keras")


def cache_state(entry):
    """"converted" (NAME.keras cached), "downloaded" (only the publisher's file) or "no"."""
    if os.path.isfile(cached_model_path(entry)):
        return "converted"
    return "downloaded" if os.path.isfile(cached_download_path(entry)) else "no"


# --------------------------------------------------------------------------- download


def file_digests(path):
    """The file's SHA-256 and MD5 (hex) and size in bytes, as a dict `sha256` / `md5` / `size`."""
    sha256, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
            size += len(block)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest(), "size": size}


def check_published(entry, digests):
    """ValueError when the file's size or hash differs from what the publisher states."""
    for what, expected in (("size", entry.size), ("sha256", entry.sha256), ("md5", entry.md5)):
        if expected is not None and str(digests[what]).lower() != str(expected).lower():
            raise ValueError(
                f"The file downloaded for {entry.name!r} from {entry.url} has {what} {digests[what]}, "
                f"but the publisher's is {expected} (corrupted download or the file was replaced); "
                "nothing was cached. Try again, or report it if it persists."
            )


@contextlib.contextmanager
def _fetched(url, target, what):
    """Downloads `url` (Keras `get_file`, progress bar) to a hidden temporary file beside `target`.

    Yields its path; the file becomes `target` only when the block succeeds (`fileio.atomic_path`)
    and is removed on any error (including the block's own checks, or Ctrl-C), so `target` only
    ever appears complete. A failed or cut download raises ConnectionError naming the URL.
    """
    import keras

    with fileio.atomic_path(target, ".part") as part_path:
        folder, part = os.path.split(part_path)
        try:
            keras.utils.get_file(fname=part, origin=url, cache_dir=folder, cache_subdir=folder,
                                 force_download=True)
        except Exception as err:  # get_file wraps URL errors in a bare Exception
            detail = " ".join(str(err).split()) or type(err).__name__
            detail = re.sub(r"^URL fetch failure on \S+: (None -- )?", "", detail)
            raise ConnectionError(f"Could not download {what} from {url} ({detail}).") from err
        yield part_path


def download_entry(entry, target):
    """Downloads `entry` to `target`, checked against the published size/hash; returns digests."""
    try:
        with _fetched(entry.url, target, f"pretrained model {entry.name!r}") as part_path:
            digests = file_digests(part_path)
            check_published(entry, digests)
    except ConnectionError as err:
        raise ConnectionError(
            f"{err} Nothing was cached. Without internet access here: download {entry.url} on another "
            f"machine, then either put it at {cached_download_path(entry)} and run again, or "
            f"convert it by hand: `{entry.convert_command()}` and pass --model {entry.name}.keras."
        ) from err.__cause__
    return digests


# --------------------------------------------------------------------------- --model URI

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MODEL_FORMS = ("a .keras file, a pretrained name (tf_netvlad models), or an https://, hf:// or "
                "kaggle:// URI of a .keras file")


def _https_model(uri, flag):
    path = urllib.parse.urlsplit(uri).path
    if not path.endswith(".keras"):
        raise ValueError(f"{flag} {uri}: the URL must name a .keras file (takes {_MODEL_FORMS}).")
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = os.path.join(cache_dir(), "remote", key, os.path.basename(path))
    if os.path.isfile(target):
        return target
    try:
        with _fetched(uri, target, "the model") as part_path:
            if not zipfile.is_zipfile(part_path):
                raise ValueError(f"{flag} {uri}: the downloaded file is not a .keras (zip) file; "
                                 "nothing was cached.")
    except ConnectionError as err:
        raise ConnectionError(f"{flag}: {err} Nothing was cached.") from err.__cause__
    return target


def _import_hub(module, scheme):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{scheme}:// model URIs need the `{module}` package: pip install {module}") from None


def _hub_download(uri, flag, call):
    try:
        path = call()
    except Exception as err:  # network, authentication, missing repo or file
        detail = " ".join(str(err).split()) or type(err).__name__
        raise OSError(f"{flag}: could not download {uri}: {type(err).__name__}: {detail}") from err
    return os.fspath(path)


def _hf_model(uri, flag):
    parts = uri[len("hf://"):].strip("/").split("/")
    if len(parts) < 3 or not parts[-1].endswith(".keras"):
        raise ValueError(
            f"{flag} {uri}: hf:// URIs must name a .keras file in the repository, "
            "hf://OWNER/REPO/PATH/FILE.keras."
        )
    hub = _import_hub("huggingface_hub", "hf")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return _hub_download(uri, flag, lambda: hub.hf_hub_download(repo_id=repo_id, filename=filename))


def _kaggle_model(uri, flag):
    parts = uri[len("kaggle://"):].strip("/").split("/")
    handle_len = 5 if len(parts) >= 6 and parts[4].isdigit() else 4
    if len(parts) <= handle_len or not parts[-1].endswith(".keras"):
        raise ValueError(
            f"{flag} {uri}: kaggle:// URIs must name a .keras file of a Kaggle model, "
            "kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]/FILE.keras."
        )
    hub = _import_hub("kagglehub", "kaggle")
    handle, file = "/".join(parts[:handle_len]), "/".join(parts[handle_len:])
    return _hub_download(uri, flag, lambda: hub.model_download(handle, path=file))


def is_uri(text):
    """Whether `text` starts with a URI scheme (`scheme://`), which `fetch_model_uri` takes."""
    return _URI.match(text) is not None


def fetch_model_uri(uri, flag="--model"):
    """The local path of the `.keras` file an `https://`, `http://`, `hf://` or `kaggle://` URI names.

    `https://` / `http://` files are downloaded once into `<cache>/remote/`; `hf://` and
    `kaggle://` go through `huggingface_hub` / `kagglehub`. Any other scheme is refused
    (ValueError); `flag` is the option named in the errors.
    """
    match = _URI.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme in ("http", "https"):
        path = _https_model(uri, flag)
    elif scheme == "hf":
        path = _hf_model(uri, flag)
    elif scheme == "kaggle":
        path = _kaggle_model(uri, flag)
    else:
        raise ValueError(f"{flag} {uri}: unsupported URI scheme {scheme!r}; {flag} takes {_MODEL_FORMS}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {uri}: the download gave no file at {path}.")
    return path
