"""detectron2's ``DatasetMapper``, naming the image file when it cannot be read or decoded."""

from detectron2.data import DatasetMapper

from ..errors import DATA_FIX, BadFileError

__all__ = ["ImageReadError", "NamedErrorDatasetMapper"]


class ImageReadError(BadFileError):
    """An image of the dataset could not be read or decoded (truncated, corrupt, missing)."""


class NamedErrorDatasetMapper(DatasetMapper):
    """
    ``DatasetMapper`` whose image-reading errors (truncated JPEG, corrupt or missing file, a size
    that disagrees with the annotation) name the file. Without it a truncated image stops a run
    with PIL's "image file is truncated" and no file name, possibly hours in.
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for bad image data
            name = dataset_dict.get("file_name", "?")
            raise ImageReadError(
                name, f"cannot be used as an image ({type(e).__name__}: {e})", DATA_FIX
            ) from e
