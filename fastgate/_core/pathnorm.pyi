"""Public face of the compiled pathnorm core; the pure-Python twin is pathnorm_py."""
from fastgate._core.pathnorm_py import MAX_PATH_LENGTH as MAX_PATH_LENGTH
from fastgate._core.pathnorm_py import PathError as PathError

__all__ = ["MAX_PATH_LENGTH", "PathError", "normalize_target"]

def normalize_target(target: bytes) -> tuple[str, str]: ...
