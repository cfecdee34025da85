"""Build contexts: the uploaded Dockerfile, or a generated static-site image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

STATIC_ROOT = "/srv/www"


def static_dockerfile(*, base_image: str, port: int) -> str:
    """A Dockerfile serving ``site/`` with busybox httpd on ``port``."""
    command = json.dumps(["httpd", "-f", "-v", "-p", str(port), "-h", STATIC_ROOT])
    return f"FROM {base_image}\nCOPY site/ {STATIC_ROOT}/\nEXPOSE {port}\nCMD {command}\n"


def static_command(port: int) -> str:
    """The runtime command recorded for a static version."""
    return f"httpd -f -v -p {port} -h {STATIC_ROOT}"


def prepare_static(*, tree: Path, workdir: Path, base_image: str, port: int) -> Path:
    """A build context holding the site files and a generated Dockerfile."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    shutil.copytree(tree, workdir / "site", symlinks=True)
    (workdir / "Dockerfile").write_text(static_dockerfile(base_image=base_image, port=port))
    return workdir
