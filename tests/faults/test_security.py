"""Security (issue 17, section 10): what a study file, a checkpoint or a results folder
someone else wrote can make ``ltsearch`` do.

- YAML tags are refused before anything is constructed (a payload that would create a
  file does not run);
- checkpoints and backbone weights are loaded with ``torch.load(weights_only=True)``: a
  pickled payload that would create a file does not run;
- a study writes inside its storage only: its name is a slug (no ``/``, ``..`` or absolute
  path) and ``<storage>/<name>`` linked elsewhere is refused before anything is written;
- the local Ray a study starts serves no dashboard: its head process runs without the
  frontend, bound to 127.0.0.1, and nothing listens on the dashboard's port (asserted on
  the real processes and listening sockets during a tiny run);
- a client without the cluster's token (or with a wrong one) is refused:
  ``tests/faults/test_node_loss.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import records
import torch
from workspace import cli_env, run_cli

from ltsearch.errors import SpecError
from ltsearch.spec.study import load_spec, spec_from_dict

pytestmark = [pytest.mark.faults]

STUDY = """\
name: sec
dataset: {kind: synthetic, classes: 4, train_images: 4, val_images: 2, image_size: 64}
model: {backbone: tiny, masks: true}
training: {schedule: end_to_end, epochs: 1, lr: 0.02, batch_size: 2, warmup_iters: 2}
loss: {name: ce}
search: {sampler: grid, objectives: [bbox/AP:max], seeds: [0]}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
storage: results
"""
DASHBOARD_PORT = 8265


class Payload:
    """Unpickling this creates the file ``target``: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str, int]]:
        return (os.open, (str(self.target), os.O_CREAT | os.O_WRONLY))


TAGS = {
    "python/object/apply": "description: !!python/object/apply:os.system ['touch {proof}']\n",
    "python/object/new": "smoke: !!python/object/new:subprocess.Popen [[touch, '{proof}']]\n",
    "python/name": "description: !!python/name:os.system\n",
    "python/module": "description: !!python/module:os\n",
    "custom local tag": "description: !touch '{proof}'\n",
}


@pytest.mark.parametrize("kind", list(TAGS))
def test_yaml_tags_are_refused_unrun(tmp_path: Path, kind: str) -> None:
    proof = tmp_path / "code-ran"
    path = tmp_path / "study.yaml"
    path.write_text(STUDY + TAGS[kind].format(proof=proof))
    with pytest.raises(SpecError, match=r"line \d+, column \d+: tag .* is not allowed") as info:
        load_spec(path)
    assert str(info.value).startswith(str(path)) and not proof.exists()
    records.record(
        case=f"yaml tag {kind}",
        group="security",
        injected=f"study file with a {kind} tag that would create a file",
        promised="YAML loaded safely: every tag but plain data refused, nothing runs",
        observed=str(info.value)[len(str(path)) + 2 :],
        code_ran=0,
    )


def test_checkpoint_and_backbone_payloads_do_not_run(tmp_path: Path) -> None:
    from ltmodels.engine.checkpoint import load_checkpoint
    from ltmodels.errors import ConfigError
    from ltmodels.losses import build_loss
    from ltmodels.modeling.detector import ModelSpec, build_detector

    proof = tmp_path / "code-ran"
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"format": "x", "model": Payload(proof)}, ckpt)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_checkpoint(ckpt, model=torch.nn.Linear(2, 2))
    weights = tmp_path / "r18.pth"
    torch.save({"conv1.weight": Payload(proof)}, weights)
    spec = ModelSpec(backbone="resnet18_fpn", backbone_weights=str(weights), norm="gn")
    with pytest.raises(ConfigError, match="is not a plain"):
        build_detector(spec, build_loss("ce", num_classes=3), 3)
    assert not proof.exists()
    records.record(
        case="pickled payload in a checkpoint and in backbone weights",
        group="security",
        injected="torch.save of an object whose unpickling creates a file",
        promised="loaded with torch.load(weights_only=True): refused, nothing runs",
        observed="both refused, the file was not created",
        code_ran=0,
    )


@pytest.mark.parametrize("name", ["../out", "a/b", "/tmp/out", "..", "a\n", "A B"])
def test_a_name_cannot_leave_the_storage(name: str) -> None:
    raw = load_raw()
    raw["name"] = name
    with pytest.raises(SpecError, match=r"^name: .* is not a slug"):
        spec_from_dict(raw)
    raw["name"], raw["smoke"] = "sec", {"name": name}
    with pytest.raises(SpecError, match=r"^smoke\.name: .* is not a slug"):
        spec_from_dict(raw)


def load_raw() -> dict[str, object]:
    import yaml

    return dict(yaml.safe_load(STUDY))


def test_a_study_dir_linked_outside_its_storage_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "project"
    (root / "results").mkdir(parents=True)
    (root / "study.yaml").write_text(STUDY)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "results" / "sec").symlink_to(outside)
    ran = run_cli("run", "study.yaml", "--no-report", cwd=root, timeout=300)
    assert ran.rc == 2, ran.describe()
    line = ran.err.strip()
    assert "\n" not in line and "study.yaml: name: " in line and "outside the storage" in line
    assert not list(outside.iterdir()), list(outside.iterdir())
    assert sorted(p.name for p in (root / "results").iterdir()) == ["sec"]

    # a dangling link, and a link inside the storage through the same check
    (root / "results" / "sec").unlink()
    (root / "results" / "sec").symlink_to(tmp_path / "gone")
    ran = run_cli("validate", "study.yaml", cwd=root, timeout=300)
    assert ran.rc == 2 and "outside the storage" in ran.err, ran.describe()
    (root / "results" / "sec").unlink()
    (root / "results" / "real").mkdir()
    (root / "results" / "sec").symlink_to(root / "results" / "real")
    monkeypatch.chdir(root)  # storage is relative to where the command runs
    assert load_spec("study.yaml").study_dir == root / "results" / "sec"
    records.record(
        case="study directory linked outside its storage",
        group="security",
        injected="<storage>/<name> a symlink to another folder (and a dangling one)",
        promised="a study writes inside its storage only",
        observed=line[len("ltsearch: error: ") :],
        written_outside=0,
    )


def ray_listeners(ray_tmp: Path) -> dict[tuple[str, int], str]:
    """``{(address, port): process name}`` of the listening TCP sockets of the processes
    whose command line names ``ray_tmp`` (the local Ray's) and their children."""
    psutil = ray_psutil()
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(ray_tmp) in " ".join(proc.info["cmdline"] or []):
                procs.append(proc)
                procs.extend(proc.children(recursive=True))
        except psutil.Error:
            continue
    out = {}
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    out[(conn.laddr.ip, conn.laddr.port)] = proc.name()
        except psutil.Error:
            continue
    return out


def ray_psutil():  # type: ignore[no-untyped-def]
    try:
        import psutil
    except ImportError:  # Ray vendors it
        import ray

        sys.path.insert(0, str(Path(ray.__file__).parent / "thirdparty_files"))
        import psutil
    return psutil


@pytest.mark.slow
def test_the_local_ray_runs_no_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray_tmp = Path(tempfile.mkdtemp(prefix="ltsec", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    root = tmp_path / "project"
    root.mkdir()
    (root / "study.yaml").write_text(STUDY)
    proc = subprocess.Popen(
        ["ltsearch", "run", "study.yaml", "--no-report"], cwd=root, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen: dict[tuple[str, int], str] = {}
    commands: set[str] = set()
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(ray_listeners(ray_tmp))
            commands |= {c for c in ray_commands(ray_tmp)}
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, out[-4000:]
    assert seen, "no listening socket of the local Ray was seen: the probe is broken"
    assert not any(port == DASHBOARD_PORT for _, port in seen), seen
    # include_dashboard=False still runs Ray's head process (usage stats only): it must
    # serve no frontend and bind to loopback
    dashboards = [c.split() for c in commands if "dashboard/dashboard.py" in c]
    for args in dashboards:
        assert "--disable-frontend" in args and "--host=127.0.0.1" in args, args
    print("listening:", sorted(seen.items()))
    exposed = sorted(f"{ip}:{port} ({name})" for (ip, port), name in seen.items()
                     if ip not in ("127.0.0.1", "::1"))  # fmt: skip
    records.record(
        case="local Ray dashboard",
        group="security",
        injected="a tiny study run with a local Ray; listening sockets of its processes polled",
        promised="no dashboard (include_dashboard=False); servers on loopback unless asked",
        observed=f"head process without frontend on 127.0.0.1, port {DASHBOARD_PORT} closed; "
        f"{len(seen)} listening sockets, not on loopback: {', '.join(exposed) or 'none'}",
        dashboard_listening=0,
        non_loopback_listeners=len(exposed),
    )


def ray_commands(ray_tmp: Path) -> list[str]:
    psutil = ray_psutil()
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(ray_tmp) in cmd:
            out.append(cmd)
    return out
