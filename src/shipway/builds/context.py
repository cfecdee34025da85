"""Build contexts: the uploaded Dockerfile, or a generated static-site image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

STATIC_ROOT = "/srv/www"


def static_dockerfile(*, base_image: str, port: int, labels: dict[str, str] | None = None) -> str:
    """A Dockerfile serving ``site/`` with busybox httpd on ``port``, ``labels`` in one LABEL.

    The engine's builder turns each label passed to its build API into a LABEL step of
    its own, each committed through a container (about 0.3 s apiece here): one
    instruction holding every label is one step.
    """
    command = json.dumps(["httpd", "-f", "-v", "-p", str(port), "-h", STATIC_ROOT])
    text = f"FROM {base_image}\nCOPY site/ {STATIC_ROOT}/\nEXPOSE {port}\nCMD {command}\n"
    if labels:
        pairs = " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items()))
        text += f"LABEL {pairs}\n"
    return text


def static_command(port: int) -> str:
    """The runtime command recorded for a static version."""
    return f"httpd -f -v -p {port} -h {STATIC_ROOT}"


def readable_by_all(root: Path) -> None:
    """Let any user read the site (and run its CGI scripts): static replicas run as
    nobody (runtime.hardening), and COPY keeps each file's mode from the upload."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if path.is_dir():
            path.chmod(mode | 0o555)
        else:
            path.chmod(mode | 0o444 | (0o111 if mode & 0o100 else 0))


def prepare_static(
    *, tree: Path, workdir: Path, base_image: str, port: int, labels: dict[str, str] | None = None
) -> Path:
    """A build context holding the site files and a generated Dockerfile (with ``labels``)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    shutil.copytree(tree, workdir / "site", symlinks=True)
    readable_by_all(workdir / "site")
    (workdir / "Dockerfile").write_text(
        static_dockerfile(base_image=base_image, port=port, labels=labels)
    )
    return workdir
