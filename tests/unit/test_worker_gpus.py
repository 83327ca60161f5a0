from __future__ import annotations

import pathlib
import stat

import pytest

from worker import exceptions, gpus
from worker.gpus import Gpu

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
    assert gpus.select(found, 1) is found[1]
    with pytest.raises(exceptions.GpuNotFound, match=r"GPU 4 .*lists 0, 1"):
        gpus.select(found, 4)


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
