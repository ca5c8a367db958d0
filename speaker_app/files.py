"""Files in and out: atomic writes, and one safe loader for tensor files from anyone.

Writes go to a temporary file that is fsynced and renamed into place, so a
crash leaves the old or the new version, never half of one.

`load_tensor_file` reads a `.pt` (torch.save) or `.npy` file without running
pickled code (`weights_only=True`, `allow_pickle=False`), and checks every
size the file declares before anything is decompressed or allocated: the
unpacked size of each zip entry, each storage against its entry, each tensor
against its storage and against a limit on values. A 1 MB file that would
unpack into gigabytes is refused in milliseconds.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

MAX_PICKLE_BYTES = 64 * 1024 * 1024  # the pickled structure of a .pt file (its tensors' data are separate entries)
_SAFE_MODULES = ("torch", "collections", "_codecs", "builtins")  # what torch.save itself writes


class TensorFileError(ValueError):
    """A tensor file that cannot be loaded; the message says why, without the file's path.

    `kind` is "objects" (pickled Python objects: refused unrun), "size" (over a limit), or "damaged".
    """

    def __init__(self, reason: str, kind: str = "damaged"):
        super().__init__(reason)
        self.kind = kind


OBJECTS = "it holds Python objects, not just tensors and plain data (refused: loading it could run code)"
DAMAGED = "it is truncated or damaged"  # or never was a tensor file: the bytes cannot tell


# -- writing -------------------------------------------------------------------------------------
def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".prev")


def atomic_write(path: str | Path, write, keep_previous: bool = False, mode: int = 0o644) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it and rename it into place:
    a crash leaves the old or the new version, never half of one. With `keep_previous`, the
    old version stays as `<path>.prev`; `path` itself exists at every moment. `mode` is the
    new file's permission bits (0o600 for files only their owner may read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.exists():
            _keep_copy(path, previous_path(path), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _keep_copy(path: Path, target: Path, mode: int) -> None:
    """Make `target` the current version of `path` (a hard link, else a copy), renamed into place."""
    os.chmod(path, mode)  # an older version may have been written with a wider mode
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            os.unlink(tmp)
            os.link(path, tmp)
        except OSError:  # a file system without hard links
            shutil.copy2(path, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- loading ---------------------------------------------------------------------------------------
def load_tensor_file(path: str | Path, max_bytes: int | None = None, max_elements: int | None = None):
    """What a `.pt` file holds (tensors and plain data), or a `.npy` file's array as a tensor.

    max_bytes: limit on the data once unpacked; max_elements: limit on any one tensor's values.
    Both are checked against the sizes the file declares, before loading. Raises TensorFileError.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise TensorFileError("the file is missing") from None
    if size == 0:
        raise TensorFileError("it is empty (truncated or damaged)")
    if path.suffix.lower() == ".npy":
        return _load_npy(path, max_bytes, max_elements)
    if not zipfile.is_zipfile(path):
        raise TensorFileError(*_not_a_zip(path))
    _check_zip(path, max_bytes, max_elements)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for unsafe files, RuntimeError for damaged ones
        # torch's own text on unsafe files explains how to load them anyway: not advice to pass on.
        if "Unsupported global" in str(error) or "Unsupported class" in str(error):
            raise TensorFileError(OBJECTS, "objects") from None
        raise TensorFileError(DAMAGED) from None


def _check_zip(path: Path, max_bytes: int | None, max_elements: int | None) -> None:
    """torch.save's zip layout, with every declared size within the limits and within the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = {info.filename: info for info in archive.infolist()}
            pickles = [name for name in entries if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise TensorFileError(DAMAGED)
            prefix = pickles[0].removesuffix("data.pkl")
            unpacked = sum(info.file_size for info in entries.values())
            if max_bytes is not None and unpacked > max_bytes:
                raise TensorFileError(f"it would unpack to {_mb(unpacked)}, over the {_mb(max_bytes)} allowed", "size")
            if entries[pickles[0]].file_size > MAX_PICKLE_BYTES:
                raise TensorFileError(f"its structure would unpack to {_mb(entries[pickles[0]].file_size)}, "
                                      f"over the {_mb(MAX_PICKLE_BYTES)} allowed", "size")
            structure = archive.read(pickles[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, ValueError) as error:
        if isinstance(error, TensorFileError):
            raise
        raise TensorFileError(DAMAGED) from None
    sizes = {name.removeprefix(prefix + "data/"): info.file_size for name, info in entries.items()
             if name.startswith(prefix + "data/")}
    _Declared(structure, sizes, max_elements).check()


class _Placeholder:
    """Stands for any object the structure names: built, called and filled without running anything."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):  # SETITEMS on a placeholder dict (an OrderedDict)
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()


class _Declared(pickle.Unpickler):
    """Reads a .pt file's pickled structure with every global replaced by a placeholder, to
    collect the storages and tensors it declares; nothing it names is imported or called."""

    def __init__(self, structure: bytes, entry_sizes: dict[str, int], max_elements: int | None):
        super().__init__(io.BytesIO(structure))
        self.entry_sizes = entry_sizes
        self.max_elements = max_elements
        self.unsafe = False

    def check(self) -> None:
        try:
            self.load()
        except TensorFileError:
            raise
        except Exception:  # any malformed structure
            raise TensorFileError(DAMAGED) from None
        if self.unsafe:
            raise TensorFileError(OBJECTS, "objects")

    def find_class(self, module: str, name: str):
        if module.split(".")[0] not in _SAFE_MODULES:
            self.unsafe = True
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._tensor
        if module == "torch" and name.endswith("Storage"):
            with warnings.catch_warnings():  # the typed storage classes are deprecated, their dtypes are not
                warnings.simplefilter("ignore")
                dtype = getattr(getattr(torch, name, None), "dtype", None)  # UntypedStorage: bytes
            return type(name, (_Placeholder,), {"itemsize": getattr(dtype, "itemsize", 1)})
        return type(name, (_Placeholder,), {})

    def persistent_load(self, pid):
        """('storage', storage type, key, location, number of elements) -> (elements, itemsize)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TensorFileError(DAMAGED)
        _, kind, key, _, elements = pid
        itemsize = getattr(kind, "itemsize", 1)
        if not isinstance(elements, int) or elements < 0 or str(key) not in self.entry_sizes:
            raise TensorFileError(DAMAGED)
        if elements * itemsize > self.entry_sizes[str(key)]:
            raise TensorFileError(f"{DAMAGED} (a storage declares more data than the file holds)")
        return elements

    def _tensor(self, storage, offset, shape, stride, *rest):
        """torch._utils._rebuild_tensor_v2's arguments: the view must fit its storage and the limit."""
        if not (isinstance(storage, int) and isinstance(offset, int)
                and all(isinstance(n, int) and n >= 0 for n in (*shape, *stride)) and len(shape) == len(stride)):
            raise TensorFileError(DAMAGED)
        elements = math.prod(shape)
        if self.max_elements is not None and elements > self.max_elements:
            raise TensorFileError(f"it declares a tensor of shape {tuple(shape)}: {elements:,} values, over the "
                                  f"{self.max_elements:,} allowed", "size")
        if elements and offset + sum((n - 1) * s for n, s in zip(shape, stride)) >= storage:
            raise TensorFileError(f"{DAMAGED} (a tensor reaches past its data)")
        return _Placeholder()


def _not_a_zip(path: Path) -> tuple[str, str]:
    """Why a file that is no zip archive is refused: a pickled program, torch's legacy format, or noise.

    Its opcodes are read, never run (pickletools)."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_PICKLE_BYTES)
    calls = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}
    try:
        opcodes = [op.name for op, _, _ in pickletools.genops(head)]
    except Exception:  # not a pickle at all
        return DAMAGED, "damaged"
    if calls & set(opcodes):
        return OBJECTS, "objects"
    if "LONG1" in opcodes:  # torch before 1.6 began with a magic number; sizes inside cannot be checked first
        return ("it is in torch's legacy format (before 1.6), whose sizes cannot be checked before loading: "
                "load it and torch.save it again"), "damaged"
    return DAMAGED, "damaged"


def _load_npy(path: Path, max_bytes: int | None, max_elements: int | None) -> torch.Tensor:
    """A .npy array as a tensor: its header's shape and dtype are checked against the limits and
    the file's size before the data are read; object arrays (pickles) are refused."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unknown .npy version {version}")
            shape, _, dtype = read_header(handle)
            data_bytes = path.stat().st_size - handle.tell()
    except (ValueError, OSError, EOFError):
        raise TensorFileError(DAMAGED) from None
    if dtype.hasobject:
        raise TensorFileError(OBJECTS, "objects")
    elements = math.prod(shape)
    if max_elements is not None and elements > max_elements:
        raise TensorFileError(f"it declares an array of shape {tuple(shape)}: {elements:,} values, over the "
                              f"{max_elements:,} allowed", "size")
    if max_bytes is not None and elements * dtype.itemsize > max_bytes:
        raise TensorFileError(f"it declares {_mb(elements * dtype.itemsize)} of data, over the {_mb(max_bytes)} "
                              "allowed", "size")
    if elements * dtype.itemsize != data_bytes:
        raise TensorFileError(DAMAGED)
    try:
        return torch.from_numpy(np.load(path, allow_pickle=False))
    except (ValueError, TypeError, OSError) as error:  # e.g. a dtype torch has no tensor for
        raise TensorFileError(f"cannot use its data: {str(error).splitlines()[0][:200]}") from None


def _mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"
