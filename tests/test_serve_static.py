"""The viewer page is self-contained: OpenSeadragon is vendored unchanged (checked against the
sha256 recorded from the npm package) and nothing is loaded from another site."""

import hashlib
import json
import re

from iste.serve.app import static_dir

VENDOR = static_dir() / "vendor" / "openseadragon"


def test_vendored_openseadragon_is_the_recorded_npm_release_with_its_license():
    manifest = json.loads((VENDOR / "vendor.json").read_text())
    assert manifest["package"] == "openseadragon" and manifest["license"] == "BSD-3-Clause"
    assert "openseadragon.min.js" in manifest["files"] and "LICENSE.txt" in manifest["files"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    on_disk = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()}
    assert on_disk == set(manifest["files"]) | {"vendor.json", "README.md"}
    assert f"openseadragon@{manifest['version']}" in (VENDOR / "README.md").read_text()
    assert "Redistribution and use in source and binary forms" in (
        VENDOR / "LICENSE.txt").read_text()


def test_the_page_loads_only_local_files():
    html = (static_dir() / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith("/static/") or r == "data:," for r in refs)
    for ref in refs:
        if ref.startswith("/static/"):
            assert (static_dir() / ref[len("/static/"):]).is_file(), ref
    for name in ("index.html", "viewer.js", "viewer.css"):
        text = (static_dir() / name).read_text()
        assert not re.search(r"https?://|//cdn|@import", text.replace(
            "http://schemas.microsoft.com", "")), name
