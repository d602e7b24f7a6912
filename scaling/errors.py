"""User-facing errors: one line that names the problem and the fix, exit code 2, no traceback.

Anything a user can cause (bad YAML, a missing file, an impossible grid) raises UserError; the CLI
prints `error: <message>` and exits 2. Programming errors stay ordinary exceptions.
"""


class UserError(Exception):
    """An error caused by the user's input; its message is printed as one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always a single line


def did_you_mean(name: str, known, otherwise: str) -> str:
    """The fix for a misspelt name: the closest of `known`, else `otherwise`."""
    import difflib

    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else otherwise


def writable_folder(path, chosen_by: str):
    """Create `path` (and its parents) now, before any work whose results would go there; a folder
    that cannot be made is a UserError naming the flag or YAML key that chose it. A URL
    (scaling/storage.py) is checked by writing and removing a small probe object there."""
    from scaling.storage import RemotePath, location

    path = location(path)
    if isinstance(path, RemotePath):
        probe = path / ".write-probe"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.write_text("")
            probe.unlink(missing_ok=True)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - object stores raise their own kinds (credentials, ...)
            raise unwritable(path, chosen_by, err) from None
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise unwritable(path, chosen_by, err) from None
    return path


def unwritable(path, chosen_by: str, err: Exception) -> UserError:
    """The one line for a folder the user chose that cannot be written."""
    reason = getattr(err, "strerror", None) or f"{type(err).__name__}: {err}"
    return UserError(f"{chosen_by} {path}: cannot write there ({reason}); choose a writable folder"
                     + (" or check the store's credentials" if "://" in str(path) else ""))
