import sys


def _import_pydicom_without_pixel_libraries() -> None:
    """Import pydicom with numpy and Pillow hidden from it, once, before anything else does.

    pydicom imports numpy and Pillow at start-up whenever they are installed (matplotlib, used by
    the benchmarks, brings both), ~20 MB in every process. The RIS never decodes pixel data: it
    stores, forwards and indexes instances. Both stay importable for code that needs them later.
    """
    if "pydicom" in sys.modules:
        return
    hidden = [name for name in ("numpy", "PIL") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import numpy` raises ImportError while pydicom loads
    try:
        import pydicom  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


_import_pydicom_without_pixel_libraries()

from ris.celery import app as celery_app  # noqa: E402

__all__ = ("celery_app",)
