"""Image files as a command names them: a folder's, searched recursively, and a list
file's, one path a line. predict, suggest, label and extract --unlabeled read them alike."""

from pathlib import Path

from smallcnn.data.images import is_image_file
from smallcnn.errors import UsageError


def folder_images(folder):
    """The image files under `folder`, recursively, in path order, as strings."""
    return [str(p) for p in sorted(p for p in Path(folder).rglob("*")
                                   if p.is_file() and is_image_file(p))]


def listed_paths(listing, option="--list"):
    """The paths of a list file as written: one per line; blank lines and `#` comments
    (indented ones too) skipped. `option` names the file in a refusal."""
    try:
        lines = Path(listing).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"Cannot read {option} {str(listing)!r} ({error}); give a text "
                         "file of image paths, one a line.") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
