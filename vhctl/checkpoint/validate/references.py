"""References: a reference's policy is there and unchanged; a policy's listed references exist.

A reference stores only the tensors it does not share with its policy; ``shared_sha256`` pins the
shared ones as the policy stored them when the reference was made.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vhctl.checkpoint.manifest import Manifest
from vhctl.checkpoint.tensors import shared_tensors_sha256, tensor_index
from vhctl.checkpoint.validate.state import CheckState
from vhctl.constants import KIND_POLICY, KIND_REFERENCE, MANIFEST_NAME
from vhctl.errors import CheckpointError, VhctlError

__all__ = ["check_reference", "nested_references"]


def check_reference(state: CheckState) -> None:
    """For a reference: its policy folder is a vhctl policy whose shared tensors still hash the same."""
    m = state.manifest
    if m is None or m.kind != KIND_REFERENCE or m.reference is None or not state.check_policy:
        return
    ref = m.reference
    policy_dir = state.policy_dir
    if policy_dir is None:
        return
    where = f"reference.policy {ref.policy!r}"
    if not policy_dir.is_dir():
        state.add(
            "reference-policy-missing",
            MANIFEST_NAME,
            f"{where} points at {policy_dir}, which does not exist; move the reference back "
            "next to its policy or re-create it with 'vhctl make-ref'",
        )
        return
    try:
        policy = Manifest.read(policy_dir)
    except VhctlError as exc:
        state.add("reference-policy-missing", MANIFEST_NAME, f"{where} is not a vhctl checkpoint: {exc}")
        return
    except OSError as exc:
        state.add("reference-policy-missing", MANIFEST_NAME, f"{where} cannot be read: {exc}")
        return
    if policy.kind != KIND_POLICY:
        state.add("reference-policy-missing", MANIFEST_NAME, f"{where} is a {policy.kind}, not a policy")
        return
    try:
        state.policy_index = tensor_index(policy_dir)
    except CheckpointError as exc:
        state.add("reference-policy-changed", MANIFEST_NAME, f"cannot read the policy's weights: {exc}")
        return
    if not ref.shared_tensors:
        return
    if not ref.shared_sha256:
        state.add(
            "manifest-invalid", MANIFEST_NAME, "reference.shared_tensors is set but shared_sha256 is not"
        )
        return
    try:
        digest = shared_tensors_sha256(policy_dir, ref.shared_tensors)
    except CheckpointError as exc:
        state.add("reference-policy-changed", MANIFEST_NAME, str(exc))
        return
    if digest != ref.shared_sha256:
        state.add(
            "reference-policy-changed",
            MANIFEST_NAME,
            f"the {len(ref.shared_tensors)} tensors shared with the policy at {ref.policy!r} have changed "
            "since this reference was made (sha256 differs); re-create it with 'vhctl make-ref'",
        )


def nested_references(state: CheckState) -> Iterator[Path]:
    """The reference folders nested in a policy that should be validated with it, in manifest order.

    A listed reference that is not there is reported when the iteration reaches it (so its problem
    comes between the problems of the references before and after it); one outside the policy
    folder, one already being validated, or any when ``check_policy`` is off, is skipped.
    """
    m = state.manifest
    if m is None or not m.references:
        return
    for rel in m.references:
        target = (state.root / rel).resolve()
        if not (target / MANIFEST_NAME).is_file():
            state.add(
                "reference-missing",
                MANIFEST_NAME,
                f"reference {rel!r} listed in the manifest is not there (moved or deleted?)",
            )
            continue
        if not state.check_policy or target in state.visited or state.root not in target.parents:
            continue
        yield target
