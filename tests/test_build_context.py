"""The generated static-site Dockerfile."""

from __future__ import annotations

import stat
from pathlib import Path

from shipway.builds.context import prepare_static, static_dockerfile


def test_labels_are_one_instruction() -> None:
    text = static_dockerfile(
        base_image="shipway/busybox:local",
        port=8080,
        labels={"shipway.version": "ver_1", "shipway.deployment": 'dep "x"'},
    )
    lines = text.splitlines()
    assert lines[0] == "FROM shipway/busybox:local"
    label_lines = [line for line in lines if line.startswith("LABEL ")]
    # One build step for every label (the engine makes one step per label of its API).
    assert label_lines == ['LABEL "shipway.deployment"="dep \\"x\\"" "shipway.version"="ver_1"']


def test_no_labels_no_instruction() -> None:
    assert "LABEL" not in static_dockerfile(base_image="b", port=80)


def test_a_static_site_is_made_readable_by_the_unprivileged_server(tmp_path: Path) -> None:
    """Static replicas run as nobody: a file uploaded 0600 must still be served."""
    tree = tmp_path / "tree"
    (tree / "private").mkdir(parents=True)
    (tree / "private" / "page.html").write_text("x")
    (tree / "private" / "page.html").chmod(0o600)
    (tree / "run.cgi").write_text("#!/bin/sh\n")
    (tree / "run.cgi").chmod(0o700)
    (tree / "private").chmod(0o700)
    site = prepare_static(tree=tree, workdir=tmp_path / "ctx", base_image="b", port=8080) / "site"
    assert stat.S_IMODE((site / "private").stat().st_mode) == 0o755
    assert stat.S_IMODE((site / "private" / "page.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((site / "run.cgi").stat().st_mode) == 0o755
