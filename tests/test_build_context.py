"""The generated static-site Dockerfile."""

from __future__ import annotations

from shipway.builds.context import static_dockerfile


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
