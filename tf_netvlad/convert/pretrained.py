"""Published NetVLAD weights by name: one table of real URLs, downloaded once, converted once, cached.

`load_pretrained("netvlad_vgg16_pitts30k")` (CLI: `--model netvlad_vgg16_pitts30k`) downloads the
publisher's file into the Keras cache (`$KERAS_HOME/tf_netvlad/`, default `~/.keras/tf_netvlad/`)
with `keras.utils.get_file` and its progress bar, checks its size and hash where the publisher
gives them (`tf_netvlad.convert.download`), converts it with `convert_matconvnet` /
`convert_pytorch` and caches the converted `NAME.keras` beside it. Later calls load that file: no
download, no conversion. The `.keras` file records where it came from (URL, SHA-256 of the
downloaded file, converter, tf_netvlad version) in its `metadata.json` under
`tf_netvlad_source`; `read_model_source` reads it back.

`resolve_model_arg` is what `--model` goes through: a local path stays as it is, a name from the
table becomes its cached `.keras` file, and `https://…/model.keras`, `hf://OWNER/REPO/FILE.keras`
and `kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]/FILE.keras` are downloaded once by
`download.fetch_model_uri` (https: into the same cache; hf/kaggle: by `huggingface_hub` /
`kagglehub` into their own caches).

Importing this module does not import TensorFlow or Keras (`tf_netvlad models` lists the table
without them); downloading and converting do.
"""

import dataclasses
import datetime
import importlib.util
import json
import os
import shutil
import tempfile
import urllib.parse
import zipfile

from tf_netvlad.convert import download
from tf_netvlad.data.fileio import atomic_path
from tf_netvlad.version import __version__

# Key of the provenance record in the converted model's `metadata.json` (inside the .keras zip).
SOURCE_KEY = "tf_netvlad_source"
CONVERTERS = ("matconvnet", "pytorch")


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published set of NetVLAD weights.

    Args:
        name: the name `load_pretrained` and `--model` take.
        url: where the publisher serves the file (as their own download code uses it).
        descriptor_dim: output size of the converted model.
        converter: "matconvnet" (struct-form `.mat`) or "pytorch" (`.pth.tar` checkpoint).
        source: who publishes it and where the URL is written (repository and file).
        description: the original model (training set, architecture).
        size: file size in bytes, when the publisher states it (else None: not checked).
        sha256 / md5: the file's hash, when the publisher states it (else None: not checked;
            the SHA-256 of what was downloaded is recorded in the converted model either way).
    """

    name: str
    url: str
    descriptor_dim: int
    converter: str
    source: str
    description: str
    size: int = None
    sha256: str = None
    md5: str = None

    @property
    def file_name(self):
        """The publisher's file name (last part of the URL path)."""
        return os.path.basename(urllib.parse.urlsplit(self.url).path)

    @property
    def suffix(self):
        """Extension of the cached download: `.mat` or `.pth.tar`."""
        return ".mat" if self.converter == "matconvnet" else ".pth.tar"

    def convert_command(self, file_name=None):
        """The manual `tf_netvlad convert` command for this file (for offline machines)."""
        flag = "--matconvnet" if self.converter == "matconvnet" else "--pytorch"
        return f"tf_netvlad convert {flag} {file_name or self.file_name} --out {self.name}.keras"


# hloc serves the official MatConvNet models in struct form (cvg/Hierarchical-Localization
# hloc/extractors/netvlad.py, `dir_models`; made with uzh-rpg/netvlad_tf_open
# matlab/net_class2struct.m). hloc checks no hash and the page states no size.
_HLOC = "https://cvg-data.inf.ethz.ch/hloc/netvlad/"
_HLOC_SOURCE = "Relja/netvlad via cvg/Hierarchical-Localization"
# Patch-NetVLAD moved its models from CloudStor (closed December 2023) to Hugging Face; the URLs
# are those of its README's manual-download list (QVPR/Patch-NetVLAD README.md). No hash is
# published. The checkpoints hold the global NetVLAD (VGG16, K = 64) plus the WPCA layer.
_PATCH = "https://huggingface.co/TobiasRobotics/Patch-NetVLAD/resolve/main/"
_PATCH_SOURCE = "QVPR/Patch-NetVLAD (Hugging Face TobiasRobotics/Patch-NetVLAD)"


def _patch_netvlad(dataset, file_stem, dim, trained_on):
    return PretrainedWeights(
        name=f"patchnetvlad_{dataset}_{dim}", url=f"{_PATCH}{file_stem}_WPCA{dim}.pth.tar?download=true",
        descriptor_dim=dim, converter="pytorch", source=_PATCH_SOURCE,
        description=f"Patch-NetVLAD global descriptor, VGG16, trained on {trained_on}, WPCA {dim}")


# The one table of published weights. pytorch-NetVlad's own checkpoint (Nanne/pytorch-NetVlad
# README) is a zip on Google Drive with no direct download URL, so it is not listed: download it
# by hand and run `tf_netvlad convert --pytorch checkpoint.pth.tar`.
PRETRAINED = {entry.name: entry for entry in (
    PretrainedWeights(
        name="netvlad_vgg16_pitts30k", url=f"{_HLOC}Pitts30K_struct.mat", descriptor_dim=4096,
        converter="matconvnet", source=_HLOC_SOURCE,
        description="official vd16_pitts30k_conv5_3_vlad_preL2_intra_white (VGG16, K = 64, WPCA 4096)"),
    PretrainedWeights(
        name="netvlad_vgg16_tokyotm", url=f"{_HLOC}TokyoTM_struct.mat", descriptor_dim=4096,
        converter="matconvnet", source=_HLOC_SOURCE,
        description="official vd16_tokyoTM_conv5_3_vlad_preL2_intra_white (VGG16, K = 64, WPCA 4096)"),
    *(_patch_netvlad("pitts", "pitts", dim, "Pittsburgh 30k") for dim in (128, 512, 4096)),
    *(_patch_netvlad("mapillary", "mapillary", dim, "Mapillary SLS") for dim in (128, 512, 4096)),
)}


# --------------------------------------------------------------------------- by name


def get_entry(name):
    """The table entry called `name`; ValueError listing the valid names otherwise."""
    entry = PRETRAINED.get(name)
    if entry is None:
        raise ValueError(
            f"Unknown pretrained model {name!r}. Valid names: {', '.join(PRETRAINED)} "
            "(`tf_netvlad models` lists them)."
        )
    return entry


def _check_converter_available(entry):
    """ImportError before any download when the converter's optional dependency is missing."""
    if entry.converter == "pytorch" and importlib.util.find_spec("torch") is None:
        raise ImportError(
            f"Pretrained model {entry.name!r} is a PyTorch checkpoint: converting it needs PyTorch, "
            "an optional dependency of tf_netvlad: `pip install torch` (the CPU wheel is enough). "
            "Nothing was downloaded."
        )


# --------------------------------------------------------------------------- convert and record


def _copy_with_source(keras_path, record, out_path):
    """Copies the `.keras` zip `keras_path` to `out_path` (atomically) with `record` added under
    `SOURCE_KEY` to its `metadata.json`.

    Keras writes `metadata.json` (keras_version, date_saved) and never reads it back, so the
    extra key changes nothing for loading. Entries are streamed, so a large weights file is never
    held in memory.
    """
    with atomic_path(out_path, ".keras") as tmp:
        with zipfile.ZipFile(keras_path) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                copy = zipfile.ZipInfo(info.filename, info.date_time)
                copy.compress_type, copy.external_attr = info.compress_type, info.external_attr
                if info.filename == "metadata.json":
                    metadata = json.loads(src.read(info).decode() or "{}")
                    metadata[SOURCE_KEY] = record
                    dst.writestr(copy, json.dumps(metadata, sort_keys=True))
                    continue
                copy.file_size = info.file_size  # lets zipfile pick ZIP64 for a large weights file
                with src.open(info) as reader, dst.open(copy, "w") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)


def read_model_source(path):
    """The provenance a pretrained `.keras` file records (dict), or None for any other model.

    Keys: `name`, `url`, `source`, `file_name`, `file_sha256`, `file_size`, `converter`,
    `tf_netvlad_version`, `converted_at`. Reads the zip's `metadata.json` only (no TensorFlow).
    """
    try:
        with zipfile.ZipFile(os.fspath(path)) as archive:
            metadata = json.loads(archive.read("metadata.json").decode())
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    record = metadata.get(SOURCE_KEY) if isinstance(metadata, dict) else None
    return record if isinstance(record, dict) else None


def _convert(entry, download_path, digests, model_path):
    if entry.converter == "matconvnet":
        from tf_netvlad.convert.matconvnet import convert_matconvnet as convert
    else:
        from tf_netvlad.convert.pytorch import convert_pytorch as convert
    try:
        model = convert(download_path)
    except ValueError as err:
        # A file the converter cannot read is no use in the cache (an error page served instead
        # of the file, a replaced upload): remove it so the next call downloads again.
        os.remove(download_path)
        raise ValueError(
            f"Could not convert pretrained model {entry.name!r} downloaded from {entry.url}; the "
            f"downloaded file was removed from the cache. {err}"
        ) from err
    if model.descriptor_dim != entry.descriptor_dim:
        os.remove(download_path)
        raise ValueError(
            f"Pretrained model {entry.name!r} from {entry.url} gives {model.descriptor_dim}-D "
            f"descriptors, but the table says {entry.descriptor_dim}-D; the file may have been "
            "replaced by its publisher. Nothing was cached."
        )
    record = {
        "name": entry.name, "url": entry.url, "source": entry.source, "file_name": entry.file_name,
        "file_sha256": digests["sha256"], "file_size": digests["size"], "converter": entry.converter,
        "tf_netvlad_version": __version__,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory(prefix=".converting-", dir=os.path.dirname(model_path)) as work:
        plain = os.path.join(work, "model.keras")
        model.save(plain)
        _copy_with_source(plain, record, model_path)
    return model


def fetch_pretrained(name):
    """The cached `.keras` file of pretrained model `name`, downloaded and converted if needed.

    Raises:
        ValueError: unknown name (lists the valid ones), a size/hash mismatch, or a file the
            converter cannot read.
        ConnectionError: the download failed or was cut (names the URL and the manual
            `tf_netvlad convert` command). Nothing is left in the cache in these cases.
        ImportError: a PyTorch checkpoint without torch installed (before any download).
    """
    entry = get_entry(name)
    model_path = download.cached_model_path(entry)
    if os.path.isfile(model_path):
        return model_path
    _check_converter_available(entry)
    download_path = download.cached_download_path(entry)
    if os.path.isfile(download_path):  # downloaded earlier, or put there by hand
        digests = download.file_digests(download_path)
        try:
            download.check_published(entry, digests)
        except ValueError:
            os.remove(download_path)
            raise
    else:
        digests = download.download_entry(entry, download_path)
    _convert(entry, download_path, digests, model_path)
    return model_path


def load_pretrained(name):
    """Loads published NetVLAD weights by name as a `NetVLADModel`.

    The first call downloads the publisher's file into the Keras cache (`$KERAS_HOME/tf_netvlad`,
    progress bar on stdout), checks it, converts it and caches `NAME.keras`; later calls only
    load that file. `tf_netvlad models` lists the names; see `docs/pretrained.md`.

    Args:
        name: a name from `tf_netvlad.convert.pretrained.PRETRAINED`, e.g.
            "netvlad_vgg16_pitts30k" (official MatConvNet VGG16, 4096-D, as hloc serves it).

    Returns:
        the uncompiled `NetVLADModel`; `read_model_source(path)` gives the recorded provenance.

    Example:
    >>> model = tf_netvlad.load_pretrained("netvlad_vgg16_pitts30k")   # doctest: +SKIP
    >>> model.descriptor_dim                                             # doctest: +SKIP
    4096
    """
    from tf_netvlad.models.model_files import load_model

    return load_model(fetch_pretrained(name), compile=False)


# --------------------------------------------------------------------------- --model NAME / URI


def resolve_model_arg(spec, flag="--model"):
    """A `--model` value as a local `.keras` path.

    An existing path is returned unchanged; a name from the table is downloaded, converted and
    cached once (`fetch_pretrained`); `https://` / `http://` URIs of a `.keras` file are
    downloaded once into `<cache>/remote/`; `hf://OWNER/REPO/FILE.keras` and
    `kaggle://OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]/FILE.keras` through `huggingface_hub` /
    `kagglehub` (`download.fetch_model_uri`). Anything else that is neither a file nor a path-like value (no folder, no
    `.keras`) is refused with the list of valid names; other values pass through for the
    command's own "file not found" error.
    """
    if spec is None:
        return None
    text = os.fspath(spec)
    if download.is_uri(text):
        return download.fetch_model_uri(text, flag)
    if os.path.exists(text):
        return text
    if text in PRETRAINED:
        return fetch_pretrained(text)
    if not text.endswith(".keras") and "/" not in text and os.sep not in text:
        raise ValueError(
            f"{flag} {text!r} is neither a file nor a pretrained model name. Valid names: "
            f"{', '.join(PRETRAINED)} (`tf_netvlad models` lists them)."
        )
    return text
