"""How the sample images (or your own files) are compressed: JPEG quality, subsampling, colour.

    python scripts/scan_jpeg_settings.py            # the samples of iste.data.samples
    python scripts/scan_jpeg_settings.py FILE ...   # SVS/TIFF (first JPEG tile of level 0), JPEG, PNG

The quality is estimated from the luminance quantisation table (exact for IJG-scaled tables:
table error 0); see iste.data.jpeg and docs/real-scans.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from iste.data.jpeg import jpeg_settings_of_file


def describe(name: str, path: Path) -> str:
    settings = jpeg_settings_of_file(path)
    if settings is None:
        return f"{name}: not JPEG-compressed ({path.suffix.lstrip('.').upper() or 'unknown'})"
    return (f"{name}: JPEG quality {settings.quality} (table error {settings.table_error:.2f}), "
            f"{settings.subsampling}, colour {settings.colour}, {settings.tables} quantisation "
            f"table(s)")


def main(argv: list[str]) -> int:
    if argv:
        targets = [(p, Path(p)) for p in argv]
    else:
        from iste.data.samples import SAMPLES, sample_path

        targets = [(name, sample_path(name)) for name in SAMPLES]
    for name, path in targets:
        print(describe(name, path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
