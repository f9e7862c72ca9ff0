"""Contract: the Hub endpoints huggingface_hub calls, as the loopback hub serves them.

The push and hub-loading tests trust ``tests/helpers/hub_server.py`` to speak the Hub's API. That holds for
the pinned client (huggingface_hub 2.4.0, hf-xet 1.8.0). If an upgrade calls other endpoints, or the
same ones in another shape, these tests fail and print the new sequence: update hub_server.py (and
the expected lists below) after checking the Hub really serves the new calls.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants, snapshot_download

if TYPE_CHECKING:
    from helpers.hub_server import LoopbackHub


REPO = "tester/contract"

_SHA = re.compile(r"\b[0-9a-f]{40}\b")
_OID = re.compile(r"\b[0-9a-f]{64}\b")


def _shape(method: str, path: str) -> str:
    path = _OID.sub("{oid}", _SHA.sub("{sha}", path))
    return f"{method} {path}"


def _cycle(hub: LoopbackHub, tmp_path: Path) -> list[str]:
    """Create, upload (regular + large file), re-upload unchanged, branch, PR, then download it all."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 1024)
    api = HfApi(endpoint=hub.url, token=hub.token)

    def ops() -> list[CommitOperationAdd]:
        return [
            CommitOperationAdd("config.json", b'{"model_type": "gpt2"}'),
            CommitOperationAdd("README.md", b"---\nlibrary_name: vhctl\n---\n# card\n"),
            CommitOperationAdd("model.safetensors", weights),
        ]

    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO  # 409 with a url: exist_ok reads it
    first = api.create_commit(REPO, ops(), commit_message="upload")
    assert api.create_commit(REPO, ops(), commit_message="again").oid == first.oid  # no-op: no commit
    api.create_branch(REPO, branch="dev")
    pr = api.create_commit(REPO, [CommitOperationAdd("extra.txt", b"x")], commit_message="pr", create_pr=True)
    assert pr.pr_revision == "refs/pr/1"
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert {b.name for b in refs.branches} == {"main", "dev"}
    folder = Path(snapshot_download(REPO, endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "cache"))
    assert (folder / "model.safetensors").read_bytes() == weights.read_bytes()
    return [_shape(r.method, r.path) for r in hub.requests]


_UPLOAD_START = [
    "POST /api/repos/create",
    "POST /api/repos/create",
    "POST /api/validate-yaml",
    "POST /api/models/tester/contract/preupload/main",
]
_COMMIT = ["POST /api/models/tester/contract/commit/main"]
_AGAIN = [
    "POST /api/validate-yaml",
    "POST /api/models/tester/contract/preupload/main",
]
_UPLOAD_END = [
    "GET /api/models/tester/contract/revision/main",
    "POST /api/models/tester/contract/branch/dev",
    "POST /api/models/tester/contract/preupload/main?create_pr=1",
    "POST /api/models/tester/contract/commit/main?create_pr=1",
    "GET /api/models/tester/contract/refs?include_prs=1",
    "GET /api/models/tester/contract/revision/main",
    "GET /api/models/tester/contract/tree/{sha}?recursive=true&expand=false",
]
_LFS = [
    "POST /tester/contract.git/info/lfs/objects/batch",
    "PUT /_lfs/upload/{oid}",
    "POST /_lfs/verify/{oid}",
]
_XET_UPLOAD = ["GET /api/models/tester/contract/xet-write-token/main"]
_REGULAR_DOWNLOADS = [
    "HEAD /tester/contract/resolve/{sha}/.gitattributes",
    "GET /tester/contract/resolve/{sha}/.gitattributes",
    "HEAD /tester/contract/resolve/{sha}/README.md",
    "GET /tester/contract/resolve/{sha}/README.md",
    "HEAD /tester/contract/resolve/{sha}/config.json",
    "GET /tester/contract/resolve/{sha}/config.json",
]
_LFS_DOWNLOAD = [
    "HEAD /tester/contract/resolve/{sha}/model.safetensors",
    "GET /tester/contract/resolve/{sha}/model.safetensors",
]
_XET_DOWNLOAD = ["GET /api/models/tester/contract/xet-read-token/{sha}"]


def _check(seen: list[str], expected_sequence: list[str], downloads: list[str]) -> None:
    # Downloads run in parallel threads: their order is free, the rest is not.
    head, tail = seen[: len(expected_sequence)], sorted(seen[len(expected_sequence) :])
    message = (
        "huggingface_hub now calls the Hub differently from what tests/helpers/hub_server.py serves; "
        "check the new calls against the Hub and update the loopback hub.\nseen:\n  " + "\n  ".join(seen)
    )
    assert head == expected_sequence, message
    assert tail == sorted(downloads), message


def test_endpoints_with_lfs(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    seen = _cycle(hub, tmp_path)
    expected = _UPLOAD_START + _LFS + _COMMIT + _AGAIN + _LFS[:1] + _UPLOAD_END
    _check(seen, expected, _REGULAR_DOWNLOADS + _LFS_DOWNLOAD)


def test_endpoints_with_xet(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    seen = _cycle(hub, tmp_path)
    expected = _UPLOAD_START + _XET_UPLOAD + _COMMIT + _AGAIN + _XET_UPLOAD + _UPLOAD_END
    _check(seen, expected, _REGULAR_DOWNLOADS + _XET_DOWNLOAD)
    # hf_xet wrote the file into the hub's local CAS and the hub found it in the shards.
    assert hub.files_at(REPO)["model.safetensors"].xet_hash is not None


def test_wrong_token_gets_401(hub: LoopbackHub) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=hub.url, token="hf_wrong").create_repo(REPO)
    assert info.value.response.status_code == 401


def test_resolve_serves_head_and_range(hub: LoopbackHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # stored by the hub itself, not in Xet
    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo(REPO)
    data = bytes(range(256)) * 8
    api.create_commit(REPO, [CommitOperationAdd("w.safetensors", data)], commit_message="w")
    url = f"{hub.url}/{REPO}/resolve/main/w.safetensors"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as response:
        assert response.headers["Content-Length"] == str(len(data))
        assert response.headers["X-Repo-Commit"] == hub.head(REPO)
        assert response.headers["ETag"].strip('"') == response.headers["X-Linked-Etag"].strip('"')
        assert response.read() == b""
    request = urllib.request.Request(url, headers={"Range": "bytes=100-"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 206 and response.read() == data[100:]
