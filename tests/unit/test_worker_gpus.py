from __future__ import annotations

import importlib.util
import os
import pathlib
import stat
import subprocess
import sys

import pytest
import structlog

from worker import daemon, exceptions, gpus
from worker.config import WorkerConfig
from worker.gpus import Gpu, GpuId

SMI_OUTPUT = """\
0, NVIDIA GeForce RTX 3090, GPU-5f1c2a9e-0000-1111-2222-333344445555, 24576
1, NVIDIA A100-SXM4-80GB, GPU-77aa0000-0000-1111-2222-333344445555, 81920

"""


def test_inventory_csv_is_parsed() -> None:
    found = gpus.parse_inventory(SMI_OUTPUT)
    assert found == [
        Gpu(0, "NVIDIA GeForce RTX 3090", "GPU-5f1c2a9e-0000-1111-2222-333344445555",
            24576 * 1024 * 1024),
        Gpu(1, "NVIDIA A100-SXM4-80GB", "GPU-77aa0000-0000-1111-2222-333344445555",
            81920 * 1024 * 1024),
    ]
    assert found[1].label == "gpu1"


def test_odd_lines_name_with_comma_and_unknown_memory() -> None:
    found = gpus.parse_inventory("3, Tesla, Special Edition, GPU-x, [N/A]\n")
    assert found == [Gpu(3, "Tesla, Special Edition", "GPU-x", 0)]


def test_inventory_is_sorted_by_index() -> None:
    text = "1, B, GPU-b, 1\n0, A, GPU-a, 1\n"
    assert [g.index for g in gpus.parse_inventory(text)] == [0, 1]


@pytest.mark.parametrize("line", [
    "No devices were found",
    "x, name, GPU-1, 100",
    "0, name, 100",
])
def test_malformed_line_is_named(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        gpus.parse_inventory(f"0, A, GPU-a, 1\n{line}\n")


def test_cuda_visible_devices_filters_by_index_or_uuid() -> None:
    found = gpus.parse_inventory(SMI_OUTPUT)
    assert gpus.visible(found, None) == found
    assert gpus.visible(found, "1") == [found[1]]
    assert gpus.visible(found, "GPU-5f1c") == [found[0]]
    assert gpus.visible(found, "77aa0000, 0") == found
    assert gpus.visible(found, "") == []


def test_select_names_the_gpus_there_are() -> None:
    found = gpus.parse_inventory(SMI_OUTPUT)
    assert gpus.select(found, GpuId(1)) is found[1]
    with pytest.raises(exceptions.GpuNotFound, match=r"GPU 4 .*lists 0, 1"):
        gpus.select(found, GpuId(4))


def test_gpu_flag_pins_cuda_to_the_nvidia_smi_numbering() -> None:
    assert gpus.cuda_env(1) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}


def _script(tmp_path: pathlib.Path, body: str) -> str:
    path = tmp_path / "fake-nvidia-smi"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


async def test_inventory_runs_the_command(tmp_path: pathlib.Path) -> None:
    command = _script(tmp_path, f"cat <<'EOF'\n{SMI_OUTPUT}EOF")
    assert await gpus.inventory(command) == gpus.parse_inventory(SMI_OUTPUT)


# -- MIG: a GPU in MIG mode is used through its MIG devices, one worker each ---------------------

#: nvidia-smi -L of a host whose GPU 1 is in MIG mode with two devices (the second listed as
#: drivers before 470 wrote it) and whose GPU 0 is not.
MIG_LISTING = """\
GPU 0: NVIDIA GeForce RTX 3090 (UUID: GPU-5f1c2a9e-0000-1111-2222-333344445555)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-77aa0000-0000-1111-2222-333344445555)
  MIG 3g.40gb     Device  1: (UUID: MIG-bbbb0000-1111-2222-3333-444455556666)
  MIG 3g.40gb     Device  0: (UUID: MIG-GPU-77aa0000-0000-1111-2222-333344445555/1/0)
"""


def _mig_host() -> list[Gpu]:
    return gpus.with_migs(gpus.parse_inventory(SMI_OUTPUT), gpus.parse_migs(MIG_LISTING))


def test_mig_devices_are_listed_under_their_gpu() -> None:
    whole, a100 = _mig_host()
    assert whole.migs == ()
    assert [(m.id, m.label, m.uuid, m.name, m.memory_bytes) for m in a100.migs] == [
        (GpuId(1, 0), "gpu1-mig0", "MIG-GPU-77aa0000-0000-1111-2222-333344445555/1/0",
         "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40 * 1024**3),
        (GpuId(1, 1), "gpu1-mig1", "MIG-bbbb0000-1111-2222-3333-444455556666",
         "NVIDIA A100-SXM4-80GB MIG 3g.40gb", 40 * 1024**3),
    ]
    # CUDA can use GPU 0 and the two devices, not GPU 1 whole
    assert [g.label for g in gpus.usable([whole, a100])] == ["gpu0", "gpu1-mig0", "gpu1-mig1"]
    # A listing without MIG mode (or not a listing at all) adds nothing
    assert gpus.parse_migs("GPU 0: X (UUID: GPU-1)\nGPU 1: Y (UUID: GPU-2)\n") == {}
    assert gpus.parse_migs(SMI_OUTPUT) == {}


def test_a_mig_device_is_named_n_colon_m_and_reached_by_its_uuid() -> None:
    _, a100 = found = _mig_host()
    device = gpus.select(found, GpuId.parse("1:1"))
    assert device is a100.migs[1] and str(device.id) == "1:1"
    # CUDA takes a MIG device by its UUID only
    assert gpus.cuda_env(device) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                     "CUDA_VISIBLE_DEVICES": device.uuid}
    assert device.uuid == "MIG-bbbb0000-1111-2222-3333-444455556666"
    assert gpus.cuda_env(found[0])["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_gpu_in_mig_mode_is_refused_whole_naming_its_devices() -> None:
    found = _mig_host()
    with pytest.raises(exceptions.GpuInMigMode, match=(
            r"GPU 1 \(NVIDIA A100-SXM4-80GB\) is in MIG mode: CUDA cannot use it whole\. Name "
            r"one of its MIG devices instead \(1:0, 1:1\), --gpu 1:0; `gpuproxy-worker "
            r"supervise` runs a worker on each\.")):
        gpus.select(found, GpuId(1))
    # The supervisor's flag is --gpus, a list that the shell must not split
    with pytest.raises(exceptions.GpuInMigMode, match=(
            r"List its MIG devices instead, --gpus 1:0,1:1, or leave --gpus out")):
        gpus.select(found, GpuId(1), flag="--gpus")
    with pytest.raises(exceptions.MigDeviceNotFound,
                       match=r"no MIG device 1:7: its MIG devices are 1:0, 1:1"):
        gpus.select(found, GpuId(1, 7))
    with pytest.raises(exceptions.MigDeviceNotFound,
                       match=r"no MIG device 0:0: it is not in MIG mode"):
        gpus.select(found, GpuId(0, 0))


def test_a_gpu_in_mig_mode_with_no_device_yet_serves_nothing_and_says_so() -> None:
    # nvidia-smi -L lists no device under a GPU whose MIG mode is on but not yet partitioned;
    # only the MIG mode query tells: CUDA would find no device on it
    assert gpus.parse_mig_modes("0, Enabled\n1, Disabled\n2, [N/A]\nx, Enabled\n") == {0}
    found = gpus.with_migs(gpus.parse_inventory(SMI_OUTPUT), {}, {0})
    assert found[0].mig_mode and gpus.usable(found) == [found[1]]
    assert gpus.visible(found, "0") == []
    with pytest.raises(exceptions.GpuInMigMode, match=(
            r"GPU 0 .* is in MIG mode: CUDA cannot use it whole\. It has no MIG device yet: "
            r"create them \(nvidia-smi mig -i 0 -cgi <profiles> -C\), or turn MIG mode off")):
        gpus.select(found, GpuId(0))
    with pytest.raises(exceptions.MigDeviceNotFound,
                       match=r"no MIG device 0:0: it is in MIG mode but has no MIG device yet"):
        gpus.select(found, GpuId(0, 0))


@pytest.mark.parametrize(("profile", "gib"), [
    ("3g.40gb", 40), ("1c.3g.20gb", 20), ("1g.10gb+me", 10), ("1g.24gb+gfx", 24), ("odd", 0)])
def test_a_mig_devices_memory_is_its_profiles(profile: str, gib: int) -> None:
    listing = f"GPU 0: A (UUID: GPU-a)\n  MIG {profile}  Device  0: (UUID: MIG-a)\n"
    [gpu] = gpus.with_migs([Gpu(0, "A", "GPU-a", 1)], gpus.parse_migs(listing))
    assert gpu.migs[0].memory_bytes == gib * 1024**3


def test_cuda_visible_devices_may_name_mig_devices() -> None:
    found = _mig_host()
    labels = lambda cvd: [g.label for g in gpus.visible(found, cvd)]  # noqa: E731
    assert labels("MIG-bbbb0000") == ["gpu1-mig1"]
    assert labels("MIG-GPU-77aa0000-0000-1111-2222-333344445555/1/0") == ["gpu1-mig0"]
    # A GPU in MIG mode named whole stands for its devices
    assert labels("1") == ["gpu1-mig0", "gpu1-mig1"]
    assert labels("GPU-77aa0000") == ["gpu1-mig0", "gpu1-mig1"]
    assert labels(None) == ["gpu0", "gpu1-mig0", "gpu1-mig1"]
    assert labels("MIG-ffff") == []


@pytest.mark.parametrize("text", ["", "x", "1:", ":1", "1:x", "-1", "1:2:3", "GPU-5f1c"])
def test_a_gpu_flag_that_is_neither_an_index_nor_a_mig_device_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a GPU index"):
        GpuId.parse(text)
    assert GpuId.parse(" 2:3 ") == GpuId(2, 3) and GpuId.parse("2") == GpuId(2)


async def test_inventory_reads_the_mig_devices(tmp_path: pathlib.Path) -> None:
    assert await gpus.inventory(_mig_smi(tmp_path)) == _mig_host()
    # and MIG mode where the driver knows the field (GPU 0: on, with no device yet)
    command = _mig_smi(tmp_path, modes="printf '0, Enabled\\n1, Enabled\\n'")
    none_yet, a100 = await gpus.inventory(command)
    assert none_yet.mig_mode and none_yet.migs == () and a100 == _mig_host()[1]


async def test_a_failing_mig_listing_leaves_the_gpus_as_they_are(tmp_path: pathlib.Path) -> None:
    command = _mig_smi(tmp_path, listing="echo 'Unknown option' >&2; exit 3")
    assert await gpus.inventory(command) == gpus.parse_inventory(SMI_OUTPUT)


async def test_no_command_means_a_cpu_worker() -> None:
    assert await gpus.inventory("no-such-nvidia-smi-on-path") is None  # none installed
    assert await gpus.inventory("") is None


async def test_a_path_given_that_does_not_exist_is_an_error(tmp_path: pathlib.Path) -> None:
    # A typo in --nvidia-smi must not turn a GPU host's worker into a CPU worker
    with pytest.raises(exceptions.InventoryFailed, match=r"absent-nvidia-smi.* no such file"):
        await gpus.inventory(str(tmp_path / "absent-nvidia-smi"))


async def test_a_failing_command_is_an_error(tmp_path: pathlib.Path) -> None:
    command = _script(tmp_path, "echo 'NVIDIA-SMI has failed because it could not communicate "
                      "with the NVIDIA driver' >&2; exit 9")
    with pytest.raises(exceptions.InventoryFailed, match="communicate with the NVIDIA driver"):
        await gpus.inventory(command)


def _mig_smi(tmp_path: pathlib.Path, listing: str = f"cat <<'EOF'\n{MIG_LISTING}EOF",
             modes: str = "") -> str:
    """A fake nvidia-smi: shell `listing` answers -L, `modes` the MIG mode query (when not
    given, that query gets the CSV too, which names no GPU in MIG mode), and the CSV query
    gets SMI_OUTPUT."""
    mode_case = f"--query-gpu=index,mig.mode.current) {modes}\n;;" if modes else ""
    return _script(tmp_path, f"""case "$1" in
-L) {listing}
;;
{mode_case}
*) cat <<'EOF'
{SMI_OUTPUT}EOF
;;
esac""")


async def test_a_worker_pinned_to_a_mig_device_by_cuda_visible_devices_finds_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = WorkerConfig(nvidia_smi=_mig_smi(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-bbbb0000-1111-2222-3333-444455556666")
    [device] = await daemon.choose_gpus(config)
    assert device.label == "gpu1-mig1"  # not taken for a CPU worker (work folder "cpu")
    # A name that matches nothing nvidia-smi lists is said, with what it lists
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-ffff")
    with structlog.testing.capture_logs() as logs:
        assert await daemon.choose_gpus(config) == []
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert "names no GPU that nvidia-smi lists" in warning["event"]
    assert "1:1 MIG-bbbb0000-1111-2222-3333-444455556666" in warning["listed"]


async def test_gpu_flag_for_a_mig_device_sets_its_uuid(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "")
    [device] = await daemon.choose_gpus(WorkerConfig(nvidia_smi=_mig_smi(tmp_path),
                                                     gpu=GpuId(1, 0)))
    assert device.uuid == os.environ["CUDA_VISIBLE_DEVICES"] == (
        "MIG-GPU-77aa0000-0000-1111-2222-333344445555/1/0")
    # Without nvidia-smi a MIG device cannot be found: said, rather than a guess
    with pytest.raises(exceptions.MigNeedsInventory, match=r"--gpu 1:0 names a MIG device"):
        await daemon.choose_gpus(WorkerConfig(nvidia_smi="", gpu=GpuId(1, 0)))


def _no_device_yet_host() -> list[Gpu]:
    """GPU 0 in MIG mode with no MIG device created yet, GPU 1 whole."""
    return gpus.with_migs(gpus.parse_inventory(SMI_OUTPUT), {}, {0})


def test_a_gpu_in_mig_mode_with_no_device_is_said_not_passed_over() -> None:
    found = _no_device_yet_host()
    # Beside a usable GPU it is left out, and the log says why
    with structlog.testing.capture_logs() as logs:
        assert gpus.visible_or_refused(found, None) == [found[1]]
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["gpu"] == 0 and "nvidia-smi mig -i 0 -cgi" in warning["advice"]
    with structlog.testing.capture_logs() as logs:
        assert gpus.visible_or_refused(found, "1") == [found[1]]
    assert logs == []
    # Alone, it is the error: the worker would be a CPU worker without a word otherwise
    with pytest.raises(exceptions.GpuInMigMode, match=r"GPU 0 .*It has no MIG device yet"):
        gpus.visible_or_refused(found, "0")
    with pytest.raises(exceptions.GpuInMigMode, match=r"GPU 0 .*It has no MIG device yet"):
        gpus.visible_or_refused(found[:1], None)


async def test_mig_devices_that_cannot_be_listed_fail_the_inventory(
    tmp_path: pathlib.Path,
) -> None:
    # GPU 1 is in MIG mode but -L fails: no device of it could be named right
    command = _mig_smi(tmp_path, listing="echo 'Failed to list devices' >&2; exit 9",
                       modes="printf '0, Disabled\\n1, Enabled\\n'")
    with pytest.raises(exceptions.InventoryFailed,
                       match=r"-L` failed: .*Failed to list devices.*MIG devices of GPU 1"):
        await gpus.inventory(command)


def test_check_gpu_on_a_broken_nvidia_smi_says_cuda_cannot_run(tmp_path: pathlib.Path) -> None:
    if importlib.util.find_spec("pycuda") is not None:
        pytest.skip("pycuda is installed: check-gpu would run its checks")
    broken = _script(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    done = subprocess.run([sys.executable, "-m", "worker.cli", "check-gpu", "--gpu", "0",
                           "--nvidia-smi", broken], capture_output=True, text=True)
    # the driver's state is CUDA's to say (exit status 2), not an inventory error (1)
    assert done.returncode == 2, done.stderr
    assert "NVIDIA-SMI has failed" in done.stderr and "cannot run CUDA" in done.stderr
