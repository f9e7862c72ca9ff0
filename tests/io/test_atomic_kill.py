"""No half-written checkpoint: SIGKILL the writing process at many points, then look at what is left.

Every command that writes a checkpoint (wrap, make-ref, attach-reward-adapter) builds it in a
temporary sibling folder and swaps it in at the end. Here real ``python -m vhctl`` processes are
killed with SIGKILL, either after a fixed delay (spread over 0.5..4 s, so most land while Python
imports or reads) or right after their temporary folder appears (so they land while files are being
written), and the destination must then be absent, unchanged, or a checkpoint that passes
``validate --deep``. The next run must clean up (or ignore) what the killed one left.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import make_reward_adapter, tiny_tokenizer

from vhctl.checkpoint.manifest import Manifest
from vhctl.checkpoint.validate import validate_checkpoint
from vhctl.constants import MANIFEST_NAME, OLD_PREFIX, TMP_PREFIX
from vhctl.errors import DestinationExistsError
from vhctl.io.files import atomic_output_dir, clean_stale_siblings
from vhctl.ops.attach import attach_adapter
from vhctl.ops.export import export_checkpoint
from vhctl.ops.make_ref import make_reference
from vhctl.ops.wrap import wrap_model

LEFTOVER = ".vhctl-"


# -- fixtures: a model big enough (13 shards, 3.7 MB) that writing takes a few file operations -----
@dataclass
class Sources:
    src: Path  # a sharded GPT-2 with tokenizer
    rm: Path  # a reward adapter for it
    rm2: Path  # another one (other weights), to replace the first with --force
    policy: Path  # wrap of src (seed 0)
    policy_ref: Path  # policy + make-ref --shared 1
    policy_rm: Path  # policy + reward adapter rm
    export_trl: Path  # export of policy, --format trl (what an export job must produce)
    export_seqcls: Path  # export of policy, --format seqcls (what an export --force job replaces)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("kill-src")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=1024, n_embd=128, n_layer=4, n_head=4, n_positions=128,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    src = root / "src"
    GPT2LMHeadModel(config).save_pretrained(src, max_shard_size="400KB")
    tiny_tokenizer().save_pretrained(src)
    rm = make_reward_adapter("gpt2", root / "rm", src, seed=0)
    rm2 = make_reward_adapter("gpt2", root / "rm2", src, seed=1)
    policy = root / "policy"
    wrap_model(str(src), policy, seed=0)
    policy_ref = root / "policy_ref"
    shutil.copytree(policy, policy_ref)
    make_reference(policy_ref, num_shared_layers=1)
    policy_rm = root / "policy_rm"
    shutil.copytree(policy, policy_rm)
    attach_adapter(policy_rm, str(rm))
    for folder in (policy, policy_ref, policy_rm):
        assert validate_checkpoint(folder, deep=True) == []
    export_checkpoint(policy, "trl", root / "export_trl")
    export_checkpoint(policy, "seqcls", root / "export_seqcls", pad_token="eos")
    return Sources(src, rm, rm2, policy, policy_ref, policy_rm, root / "export_trl", root / "export_seqcls")


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (leftovers of killed runs excluded)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(LEFTOVER) for part in rel.parts):
            out[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(LEFTOVER)) if folder.is_dir() else []


# -- one kill ----------------------------------------------------------------------------------------
@dataclass
class Job:
    command: str  # wrap | make-ref | attach | export, each also as <command>-force
    mode: str  # "delay": kill after ``wait`` s; "trigger": kill ``wait`` s after the temp folder appears
    wait: float
    folder: Path = Path()
    dest: Path = Path()  # the checkpoint the command writes or changes
    watch: Path = Path()  # where its temporary folder appears
    args: list[str] = field(default_factory=list)
    before: dict[str, str] = field(default_factory=dict)
    start_from: Path | None = None  # what ``dest`` is a copy of before the run (None: absent)
    killed: bool = False
    mid_write: bool = False  # a temporary folder existed when the kill was sent
    tries: int = 0


def reset(job: Job) -> None:
    """Put the job's folder back in its state before the run."""
    if job.folder.exists():
        shutil.rmtree(job.folder)
    job.folder.mkdir()
    if job.start_from is not None:
        shutil.copytree(job.start_from, job.dest)


def prepare(job: Job, index: int, base: Path, s: Sources) -> Job:
    job.folder = base / f"job{index:02d}"
    job.dest = job.folder / "ck"
    if job.command.startswith("wrap"):
        job.start_from = s.policy if job.command == "wrap-force" else None
        job.watch = job.folder
        job.args = ["wrap", str(s.src), "--out", str(job.dest), "--seed", "1"]
        if job.command == "wrap-force":
            job.args.append("--force")
    elif job.command.startswith("make-ref"):
        job.start_from = s.policy_ref if job.command == "make-ref-force" else s.policy
        job.watch = job.dest
        job.args = ["make-ref", str(job.dest), "--shared", "2" if job.command == "make-ref-force" else "1"]
        if job.command == "make-ref-force":
            job.args.append("--force")
    elif job.command.startswith("export"):
        force = job.command == "export-force"
        job.start_from = s.export_seqcls if force else None
        job.watch = job.folder
        job.args = ["export", str(s.policy), "--format", "trl", "--out", str(job.dest)] + (
            ["--force"] if force else []
        )
    else:
        force = job.command == "attach-force"
        job.start_from = s.policy_rm if force else s.policy
        job.watch = job.folder
        job.args = ["attach-reward-adapter", str(job.dest), str(s.rm2 if force else s.rm)]
        if force:
            job.args.append("--force")
    reset(job)
    job.before = tree(job.dest) if job.dest.exists() else {}
    return job


def _temp_exists(watch: Path) -> bool:
    try:
        return any(e.name.startswith(TMP_PREFIX) for e in os.scandir(watch))
    except FileNotFoundError:
        return False


def run_and_kill(job: Job) -> Job:
    """Start the command, SIGKILL it at the job's point; retry sooner if it finished first."""
    wait = job.wait
    for attempt in range(5):
        job.tries = attempt + 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "vhctl", "-q", *job.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        if job.mode == "delay":
            deadline = time.monotonic() + wait
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            while proc.poll() is None and not _temp_exists(job.watch):
                time.sleep(0.001)
            if wait:
                time.sleep(wait)
        mid_write = _temp_exists(job.watch)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        if rc == -signal.SIGKILL:
            job.killed, job.mid_write = True, mid_write
            return job
        assert rc == 0, f"{job.args} failed with exit code {rc} before it could be killed"
        # It finished first: undo its work and try again, killing sooner.
        reset(job)
        wait /= 2
    return job


def check_after_kill(job: Job, s: Sources) -> str:
    """The destination is absent, unchanged, or passes validate --deep; returns which."""
    dest = job.dest
    if not dest.exists():
        # Only the fallback path (no atomic exchange) can leave an existing destination moved aside;
        # the next run puts it back first thing.
        if job.before:
            assert any(n.startswith(OLD_PREFIX) for n in leftovers(dest.parent)), (
                f"{job.command}: old checkpoint lost"
            )
            clean_stale_siblings(dest)
            assert tree(dest) == job.before
            return "restored"
        return "absent"
    if job.command.startswith("export"):  # not a vhctl checkpoint: it must be the old or the whole new one
        now = tree(dest)
        assert now in (job.before, tree(s.export_trl)), (
            f"{job.command} {job.mode} {job.wait}: {dest} is broken"
        )
        return "unchanged" if now == job.before else "complete"
    assert validate_checkpoint(dest, deep=True) == [], (
        f"{job.command} {job.mode} {job.wait}: {dest} is broken"
    )
    ref = dest / "ref"
    if job.command.startswith("make-ref") and (ref / MANIFEST_NAME).exists():
        assert validate_checkpoint(ref, deep=True) == []
    now = tree(dest)
    if now == job.before:
        return "unchanged"
    if job.command.startswith("make-ref"):
        # The policy's own files never change; only its manifest (references, frozen) and ref/.
        policy_files = {k: v for k, v in now.items() if not k.startswith("ref/") and k != MANIFEST_NAME}
        assert policy_files == {
            k: v for k, v in job.before.items() if not k.startswith("ref/") and k != MANIFEST_NAME
        }
    return "complete"


def next_run(job: Job, s: Sources) -> None:
    """What the next (uninterrupted) run does: finish the job, leave no leftover behind."""
    if job.command.startswith("wrap"):
        wrap_model(str(s.src), job.dest, seed=1, force=True)
    elif job.command.startswith("make-ref"):
        make_reference(job.dest, num_shared_layers=2 if job.command == "make-ref-force" else 1, force=True)
    elif job.command.startswith("export"):
        export_checkpoint(s.policy, "trl", job.dest, force=True)
        assert tree(job.dest) == tree(s.export_trl)
    else:
        attach_adapter(job.dest, str(s.rm2 if job.command == "attach-force" else s.rm), force=True)
    if not job.command.startswith("export"):
        assert validate_checkpoint(job.dest, deep=True) == []
    assert leftovers(job.watch) == [] and leftovers(job.dest) == [] and leftovers(job.dest.parent) == []


def kill_plan() -> list[Job]:
    """26 kills over the four commands (each writing fresh and replacing with --force): after delays
    spread over 0.5..4 s, and 0 to 20 ms after the temporary folder appears (plus two attach kills
    0.5 s and 1 s after it appears, while the adapter is being checked)."""
    delays = {"wrap": (0.5, 2.0, 1.2), "make-ref": (1.0, 3.5, 2.5), "attach": (1.5, 4.0, 3.0),
              "export": (0.8, 3.0, 2.0)}  # fmt: skip
    jobs: list[Job] = []
    for family, (first, second, forced) in delays.items():
        jobs += [
            Job(family, "delay", first),
            Job(family, "delay", second),
            Job(f"{family}-force", "delay", forced),
        ]
        jobs += [
            Job(family, "trigger", 0.0),
            Job(family, "trigger", 0.02),
            Job(f"{family}-force", "trigger", 0.005),
        ]
    jobs += [Job("attach-force", "trigger", 0.5), Job("attach", "trigger", 1.0)]
    return jobs


def test_sigkill_never_leaves_a_broken_checkpoint(tmp_path: Path, sources: Sources) -> None:
    jobs = [prepare(job, i, tmp_path, sources) for i, job in enumerate(kill_plan())]
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = list(pool.map(run_and_kill, jobs))
    outcomes: dict[str, int] = {}
    for job in jobs:
        assert job.killed, f"{job.command} could not be killed before it finished"
        outcome = check_after_kill(job, sources)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        next_run(job, sources)
    killed = sum(job.killed for job in jobs)
    mid = sum(job.mid_write for job in jobs)
    print(f"\nkills: {killed} ({mid} while a temporary folder existed); outcomes: {outcomes}")
    assert killed >= 20
    assert len({j.command for j in jobs}) == 8


# -- the same guarantees, in-process, at exact points --------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_failure_before_swap_keeps_old_checkpoint(
    tmp_path: Path, sources: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "ck"
    shutil.copytree(sources.policy, dest)
    before = tree(dest)

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("vhctl.ops.wrap.finish_manifest", boom)
    with pytest.raises(RuntimeError):
        wrap_model(str(sources.src), dest, seed=3, force=True)
    assert tree(dest) == before and leftovers(tmp_path) == []


def test_failed_attach_and_make_ref_change_nothing(
    tmp_path: Path, sources: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "ck"
    shutil.copytree(sources.policy_rm, dest)
    before = tree(dest)

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr("vhctl.ops.attach.check_adapter_fits", boom)
    with pytest.raises(RuntimeError):
        attach_adapter(dest, str(sources.rm2), force=True)
    assert tree(dest) == before and leftovers(tmp_path) == []
    monkeypatch.setattr("vhctl.ops.make_ref.write_safetensors_subset", boom)
    with pytest.raises(RuntimeError):
        make_reference(dest, num_shared_layers=1)
    assert tree(dest) == before and leftovers(dest) == []


def test_fallback_swap_restores_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an atomic exchange the old folder is moved aside first; a run killed right then
    leaves it as .vhctl-old-*, and the next run puts it back before doing anything."""
    dest = tmp_path / "ck"
    dest.mkdir()
    (dest / "a").write_text("old")
    monkeypatch.setattr("vhctl.io.files._exchange", lambda a, b: False)
    with atomic_output_dir(dest, force=True) as tmp:
        (tmp / "a").write_text("new")
    assert (dest / "a").read_text() == "new" and leftovers(tmp_path) == []

    pid = _dead_pid()
    dest.rename(tmp_path / f"{OLD_PREFIX}ck-{pid}-0123abcd")  # killed between the two renames
    (tmp_path / f"{TMP_PREFIX}ck-{pid}-89abcdef").mkdir()
    with pytest.raises(DestinationExistsError):  # the old one is back, so it exists
        with atomic_output_dir(dest):
            pass
    assert (dest / "a").read_text() == "new" and leftovers(tmp_path) == []


def test_cleanup_only_touches_its_own_leftovers(tmp_path: Path) -> None:
    """Cleaning for ``ck`` must not take the leftovers of ``ck-2`` (nor of a live writer) for its own."""
    dead = _dead_pid()
    other = tmp_path / f"{TMP_PREFIX}ck-2-{dead}-0123abcd"
    other_old = tmp_path / f"{OLD_PREFIX}ck-2-{dead}-0123abcd"
    live = tmp_path / f"{TMP_PREFIX}ck-{os.getppid()}-0123abcd"
    stale = tmp_path / f"{TMP_PREFIX}ck-{dead}-0123abcd"
    odd = tmp_path / f"{TMP_PREFIX}ck-notapid"
    for folder in (other, other_old, live, stale, odd):
        folder.mkdir()
    clean_stale_siblings(tmp_path / "ck")
    assert not stale.exists()
    assert other.exists() and other_old.exists() and live.exists() and odd.exists()
    assert not (tmp_path / "ck").exists()


def test_atomic_output_dir_removes_parents_it_created(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "ck"
    with pytest.raises(RuntimeError), atomic_output_dir(dest) as tmp:
        (tmp / "x").write_text("half")
        raise RuntimeError("fail")
    assert list(tmp_path.iterdir()) == []


def test_manifest_write_leaves_no_temp_file(tmp_path: Path, sources: Sources) -> None:
    dest = tmp_path / "ck"
    shutil.copytree(sources.policy, dest)
    dead = _dead_pid()
    stale = dest / f"{TMP_PREFIX}{MANIFEST_NAME}-{dead}-0123abcd"
    stale.write_text("{")  # a writer killed mid-write
    Manifest.read(dest).write(dest)
    assert leftovers(dest) == []
    assert validate_checkpoint(dest) == []


def test_attach_through_a_symlink_keeps_the_link(tmp_path: Path, sources: Sources) -> None:
    """The swap replaces the real folder, not a symlink the user points at it."""
    real = tmp_path / "real"
    shutil.copytree(sources.policy, real)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    attach_adapter(tmp_path / "link", str(sources.rm))
    assert (tmp_path / "link").is_symlink()
    assert "reward_adapter" in Manifest.read(real).adapters
    assert validate_checkpoint(real, deep=True) == [] and leftovers(tmp_path) == []
