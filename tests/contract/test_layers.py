"""The layers of the code (.importlinter) hold, and the check would catch a stage importing another stage or
runtime importing a stage."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), str(config)],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


@pytest.fixture
def copy_of_the_code(tmp_path: Path) -> tuple[Path, Path]:
    """The package's sources under another root name (the installed `rhd` would shadow a copy named alike)."""
    renamed = re.compile(r"\brhd\.")
    for source in (ROOT / "services" / "rhd").rglob("*.py"):
        target = tmp_path / "rhdcopy" / source.relative_to(ROOT / "services" / "rhd")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(renamed.sub("rhdcopy.", source.read_text()).replace("import rhd\n", "import rhdcopy\n"))
    config = tmp_path / ".importlinter"
    text = (ROOT / ".importlinter").read_text()
    config.write_text(renamed.sub("rhdcopy.", text).replace("root_package = rhd", "root_package = rhdcopy"))
    return tmp_path, config


def test_the_code_keeps_its_layers():
    result = lint_imports(ROOT, ROOT / ".importlinter")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_copy_keeps_them_too(copy_of_the_code):
    tree, config = copy_of_the_code
    result = lint_imports(tree, config)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "named"),
    [
        ("features/ops.py", "from rhdcopy.inspect.ops import inspect", "rhdcopy.features.ops -> rhdcopy.inspect.ops"),
        ("runtime/records.py", "from rhdcopy.split import ops", "rhdcopy.runtime.records -> rhdcopy.split.ops"),
        (
            "imaging/sector.py",
            "from rhdcopy.runtime import metrics",
            "rhdcopy.imaging.sector -> rhdcopy.runtime.metrics",
        ),
        ("segment/ops.py", "from rhdcopy.watch import figures", "rhdcopy.segment.ops -> rhdcopy.watch.figures"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(copy_of_the_code, module, line, named):
    tree, config = copy_of_the_code
    with (tree / "rhdcopy" / module).open("a") as f:
        f.write(f"\n{line}  # the violation\n")
    result = lint_imports(tree, config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout
    assert named in result.stdout
