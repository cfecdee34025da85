"""Registry references and deletions (pure parsing; deletions against a real registry are
in tests/cluster)."""

from __future__ import annotations

from shipway.config import Settings
from shipway.registry.client import ImageReference, api_base, collect_garbage, delete_image

DIGEST = "sha256:" + "ab" * 32


def test_only_by_digest_references_to_a_registry_host_are_registry_images() -> None:
    parsed = ImageReference.parse(f"10.0.0.254:5000/shipway/dep_1@{DIGEST}")
    assert parsed == ImageReference(host="10.0.0.254:5000", name="shipway/dep_1", digest=DIGEST)
    assert ImageReference.parse(f"registry.example.com/a/b@{DIGEST}") is not None
    assert ImageReference.parse(f"localhost/app@{DIGEST}") is not None
    for local in ("shipway/dep_1:v3", f"shipway/dep_1@{DIGEST}", "sha256:abc", "app"):
        assert ImageReference.parse(local) is None, local


def test_a_local_image_is_never_sent_to_a_registry() -> None:
    assert delete_image("shipway/dep_1:v3", settings=Settings()) is False


def test_the_api_address_defaults_to_https_of_the_host() -> None:
    assert api_base(Settings(), "reg:5000") == "https://reg:5000"
    assert api_base(Settings(registry_api_url="http://reg:5000/"), "reg:5000") == "http://reg:5000"


def test_no_gc_command_means_the_operator_runs_it() -> None:
    assert collect_garbage(settings=Settings(registry_gc_command="")) is None
    assert collect_garbage(settings=Settings(registry_gc_command="echo collected")) == "collected\n"
