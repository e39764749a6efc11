"""The wheel: built from the checkout, it holds the library (kwta, with kernels/ as kwta.kernels) and nothing else;
installed into a fresh venv, `import kwta` works from outside the checkout and evaluates a torchvision model."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY_MODULES = {"__init__", "functional", "modules", "models", "data", "checkpoint", "attacks", "evaluation",
                   "journal", "binarization", "budgets", "landscape", "adversarial", "distributed", "machine",
                   "released"}
KERNEL_MODULES = {"__init__", "reference", "cpu", "triton_kwta", "aot", "cost"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what the build reads, so no build/ folder of an earlier build can leak into it."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for folder in ("kwta", "kernels"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "weights" / "fashion-mnist").mkdir(parents=True)  # released networks stay beside the package
    (source / "weights" / "fashion-mnist" / "relu.pt").write_bytes(b"weights")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           "--wheel-dir", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("kwta-*.whl")
    return path


def test_the_wheel_ships_the_library_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"kwta"}  # no `kernels`, `bench`, `experiments`, `plots`, `scripts` or `weights` beside it
    assert not any(name.endswith(".pt") for name in names)
    modules = {name[len("kwta/"):-len(".py")] for name in names if name.startswith("kwta/") and name.count("/") == 1}
    kernels = {name[len("kwta/kernels/"):-len(".py")] for name in names if name.startswith("kwta/kernels/")}
    assert modules == LIBRARY_MODULES and kernels == KERNEL_MODULES
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: torch>=" in metadata and "Provides-Extra: attacks" in metadata
    assert any(name.endswith("licenses/LICENSE") for name in names)


def test_a_fresh_venv_imports_kwta_from_outside_the_checkout_and_evaluates_a_torchvision_model(wheel, tmp_path):
    """The venv gets the wheel alone; torch and the rest come from this environment's site-packages as a plain
    path (their own .pth files, this checkout's editable install among them, are not run)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    script = textwrap.dedent("""
        import torch, torchvision
        import kwta
        from kwta.attacks import AttackSettings
        from kwta.data import get_datasets

        _, test_ds, _ = get_datasets("fashion-mnist", augment=False)
        images = torch.stack([test_ds[i][0] for i in range(4)]).expand(-1, 3, -1, -1)
        labels = torch.tensor([test_ds[i][1] for i in range(4)])
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).eval()
        assert kwta.replace_relu(model, 0.2) == 9
        result = kwta.evaluate(model, images, labels, eps=0.1, attacks=["pgd", "bpda"], eps_curve="none",
                               settings=AttackSettings(pgd_steps=3, pgd_restarts=1, bpda_temperatures=(1.0,),
                                                       bpda_steps=3, bpda_iterations=2))
        print(kwta.__file__)
        print(result.to_markdown())
    """)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = subprocess.run([python, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    location, markdown = run.stdout.split("\n", 1)
    assert location.startswith(site) and not location.startswith(str(ROOT))
    assert markdown.startswith("## Robust accuracy")
    assert "\n| PGD | " in markdown and "\n| **worst case** | " in markdown
