"""Query set files as older bootstap-queries wrote them, for the tests that read them."""

import io
import zipfile

import numpy as np


def as_version_1(path, out):
    """A copy of the set file at `path` in format version 1 (no demonstration images): `out`."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as old:
        for item in source.namelist():
            if item.startswith("image_png.") or item == "image_index.npy":
                continue
            content = source.read(item)
            if item == "version.npy":
                buffer = io.BytesIO()
                np.save(buffer, np.array(1, np.int64))
                content = buffer.getvalue()
            old.writestr(item, content)
    return str(out)
